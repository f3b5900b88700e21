'use strict';
// Loading the function's handler from its handler string (the init phase),
// as Lambda's Node runtime does.
//
// "dir/sub/app.handler" or "app.obj.fn": the module is the text up to the
// first '.' after the last '/', resolved against the task root; the rest is a
// dotted path of properties on the module's exports. The module file is
// tried in Lambda's order: the name as given, then name.js (CommonJS unless
// the nearest package.json says "type": "module"), name.js as an ES module
// if it does, name.mjs, name.cjs; then require's own resolution from the
// task root (a directory module, a package in node_modules).

const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');
const errors = require('./errors');

// Whether the nearest package.json above `dir` declares "type": "module". A
// node_modules directory ends the search, as in Node's own lookup.
function typeModule(dir) {
  for (;;) {
    if (dir.endsWith('/node_modules')) return false;
    const pj = path.join(dir, 'package.json');
    // A stat first: a failed read throws, and an exception costs more than
    // a stat on the cold start path.
    if (exists(pj)) {
      try {
        const pkg = JSON.parse(fs.readFileSync(pj, 'utf8'));
        return pkg !== null && typeof pkg === 'object' && pkg.type === 'module';
      } catch (e) {
        console.warn(`${pj} cannot be read, it will be ignored for ES module detection purposes.`, e);
        return false;
      }
    }
    const parent = path.dirname(dir);
    if (parent === dir) return false;
    dir = parent;
  }
}

function exists(p) {
  // fs.statSync's throwIfNoEntry: false saves an exception per miss.
  return fs.statSync(p, { throwIfNoEntry: false }) !== undefined;
}

async function importFile(p) {
  return import(pathToFileURL(p).href);
}

// The module's exports (CommonJS) or namespace (ES module). Throws what the
// module throws, or require's MODULE_NOT_FOUND.
async function loadModule(taskRoot, moduleRoot, name) {
  const base = path.resolve(taskRoot, moduleRoot, name);
  if (exists(base)) return require(base);
  const esm = typeModule(path.dirname(base));
  if (!esm && exists(base + '.js')) return require(base + '.js');
  if (esm && exists(base + '.js')) return importFile(base + '.js');
  if (exists(base + '.mjs')) return importFile(base + '.mjs');
  if (exists(base + '.cjs')) return require(base + '.cjs');
  // Not a file of the task: what require finds from the task root.
  return require(require.resolve(name, { paths: [taskRoot, moduleRoot] }));
}

// The handler function named by `handler`, loaded below `taskRoot`. Throws
// a Runtime.* fault, or the error the module threw while loading.
async function loadHandler(taskRoot, handler) {
  if (handler.includes('..')) {
    throw errors.fault(errors.MALFORMED_HANDLER_NAME,
      `'${handler}' is not a valid handler name. Use absolute paths when specifying root directories in handler names.`);
  }
  const slash = handler.lastIndexOf('/');
  const moduleRoot = handler.slice(0, slash + 1);
  const rest = handler.slice(slash + 1);
  const dot = rest.indexOf('.');
  if (dot === -1) throw errors.fault(errors.MALFORMED_HANDLER_NAME, 'Bad handler');
  const name = rest.slice(0, dot);
  const attrPath = rest.slice(dot + 1);

  let mod;
  try {
    mod = await loadModule(taskRoot, moduleRoot, name);
  } catch (e) {
    if (e instanceof SyntaxError) throw errors.fault(errors.USER_CODE_SYNTAX_ERROR, e);
    if (e !== null && typeof e === 'object' && (e.code === 'MODULE_NOT_FOUND' || e.code === 'ERR_MODULE_NOT_FOUND')) {
      throw errors.fault(errors.IMPORT_MODULE_ERROR, e);
    }
    throw e;
  }
  let fn = mod;
  for (const key of attrPath.split('.')) fn = fn && fn[key];
  if (!fn) throw errors.fault(errors.HANDLER_NOT_FOUND, `${handler} is undefined or not exported`);
  if (typeof fn !== 'function') throw errors.fault(errors.HANDLER_NOT_FOUND, `${handler} is not a function`);
  return fn;
}

module.exports = { loadHandler };

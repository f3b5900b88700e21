'use strict';
// The Node.js runtime of a lambdalet environment: Lambda's Node runtime
// (handler loading, context, callback and promise semantics, error shapes,
// log format) serving invokes over the worker channel
// (docs/architecture.md § Worker channel) instead of the Runtime API.
//
// B starts it before any function is chosen, so that a cold start skips
// Node's own start:
//
//   node --max-old-space-size=<N> --expose-gc /var/runtime/node/bootstrap.js
//
// with LAMBDALET_WORKER_FD (a socket to the supervisor) and
// LAMBDALET_CONTROL_FD (a socket to B) in its environment. Its life:
//
// 1. pre-start: load and prime everything the runtime uses, write
//    {"t":"loaded"} to the control fd and wait for one `go` line on it
//    (EOF instead: exit 0; a bad line: exit 121);
// 2. specialise: drop to the function's uid and gid, close the control fd,
//    take the function's environment, working directory and module paths,
//    load the handler (the init phase) and write {"t":"ready","init_ms":…}
//    or {"t":"init_error","error":…} (then exit 0) to the worker fd;
// 3. serve invokes from the worker fd, one at a time, until EOF (exit 0).
//    A line that is not an invoke: exit 121. An uncaught exception or
//    unhandled rejection: it is the invoke's error, then exit 129.

// Exit statuses (B and the supervisor read them).
const EXIT_OK = 0; // control or worker channel closed, or after init_error
const EXIT_PROTOCOL = 121; // a line the runtime cannot accept, or the uid drop failed
const EXIT_UNCAUGHT = 129; // uncaught exception or unhandled rejection (Lambda's status)

// --- Phase 1: pre-start (no function known, runs as root) ---------------------

// Everything the runtime itself needs, loaded now rather than on the cold
// start path. Node's common built-ins too: a function's first require of one
// then costs a cache lookup.
const fs = require('fs');
const net = require('net');
const Module = require('module');
const logging = require('./logging');
const errors = require('./errors');
const channel = require('./channel');
const loader = require('./loader');
const invoke = require('./invoke');
for (const name of ['path', 'url', 'util', 'stream', 'events', 'buffer', 'os', 'timers', 'string_decoder',
  'querystring', 'crypto', 'http', 'https', 'zlib', 'assert', 'perf_hooks', 'async_hooks']) {
  require(name);
}

function die(why) {
  logging.writeString(logging.STDERR, `lambdalet: node runtime: ${why}\n`);
  process.exit(EXIT_PROTOCOL);
}

function fdFromEnv(name) {
  const text = process.env[name];
  const fd = Number(text);
  if (text === undefined || !/^[0-9]+$/.test(text) || !Number.isSafeInteger(fd)) die(`${name}: expected an fd number, got ${JSON.stringify(text)}`);
  return fd;
}

const controlFd = fdFromEnv('LAMBDALET_CONTROL_FD');
const workerFd = fdFromEnv('LAMBDALET_WORKER_FD');

// Output to fds 1 and 2 is synchronous from here on (logging.js says why).
logging.installStdio();

// Lifecycle of the runtime on the worker channel.
const INIT = 0; // specialising: nothing may arrive yet
const SERVING = 1; // ready sent: invokes arrive one at a time
const EXITING = 2; // a last line is being written, then the process exits
let state = INIT;

let handler = null;
let specialising = false; // the init phase has begun: errors are the function's
let current = null; // the Invocation in progress
const queued = []; // invoke lines that came while one was in progress

// The worker socket is opened now (net.Socket makes the fd non-blocking;
// nothing arrives on it before `ready`).
const worker = new net.Socket({ fd: workerFd, readable: true, writable: true });
let send = (line, after) => worker.write(line, after);
const splitter = new channel.LineSplitter(onLine);
worker.on('data', (chunk) => splitter.push(chunk));
// The supervisor closed the channel (or it broke): this environment is done.
worker.on('end', () => process.exit(EXIT_OK));
worker.on('error', () => process.exit(EXIT_OK));

function onLine(line) {
  if (state !== SERVING) {
    if (state === INIT) die(`unexpected line on the worker channel before ready: ${line.slice(0, 200)}`);
    return;
  }
  if (current !== null) queued.push(line);
  else startInvoke(line);
}

let traced = false; // _X_AMZN_TRACE_ID is set

function startInvoke(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    die(`bad line on the worker channel: ${e.message}`);
  }
  if (msg === null || typeof msg !== 'object' || msg.t !== 'invoke' ||
      typeof msg.request_id !== 'string' || typeof msg.deadline_ms !== 'number') {
    die(`unexpected line on the worker channel: ${line.slice(0, 200)}`);
  }
  const inv = new invoke.Invocation(msg, respond);
  current = inv;
  logging.setRequestId(msg.request_id);
  // As Lambda: the invoke's X-Ray trace id, or none at all.
  const traceId = msg.xray_trace_id;
  if (typeof traceId === 'string') {
    process.env._X_AMZN_TRACE_ID = traceId;
    traced = true;
  } else if (traced) {
    delete process.env._X_AMZN_TRACE_ID;
    traced = false;
  }
  // While the handler runs, only the function's own work keeps the event
  // loop alive: when it has none left, 'beforeExit' ends the invoke.
  worker.unref();
  inv.run(handler, msg);
}

// The Invocation's response line. Console output of the invoke is already
// in fds 1 and 2 (written synchronously).
function respond(line) {
  current = null;
  logging.setRequestId(undefined);
  worker.ref();
  if (state === EXITING) {
    send(line, () => process.exit(EXIT_UNCAUGHT));
    return;
  }
  send(line);
  if (queued.length !== 0) startInvoke(queued.shift());
}

// The event loop has nothing left to do while the worker socket is unref'd:
// the invoke in progress ends (invoke.js, loopEmpty), or the init phase
// waits for something that cannot happen (a top-level await that never
// settles, where Node itself would exit with status 13).
process.on('beforeExit', () => {
  if (current !== null) current.loopEmpty();
  else if (state === INIT && specialising) {
    initError(errors.fault(errors.NODE_JS_EXIT, errors.NODE_JS_EXIT_MESSAGE), true);
  }
});

// An error no handler caught, as Lambda reports it: logged, the error of
// the invoke in progress (init_error during init), then the process exits.
function fatal(err, title) {
  if (state === EXITING) return;
  // Before `go` it can only be the runtime's own fault: no function to tell.
  if (!specialising) die(`${title} while pre-started: ${err && err.stack}`);
  logging.logError(title, err);
  if (state === INIT) {
    initError(err, false);
    return;
  }
  state = EXITING;
  const inv = current;
  if (inv !== null && inv.state !== invoke.DONE) {
    inv.completed = true;
    inv.error(err, null);
  } else {
    // After the last response is out (a large one may still be queued).
    worker.ref();
    send('', () => process.exit(EXIT_UNCAUGHT));
  }
}

process.on('uncaughtException', (err) => fatal(err, 'Uncaught Exception'));
process.on('unhandledRejection', (reason, promise) => {
  const err = errors.fault(errors.UNHANDLED_PROMISE_REJECTION, errors.safeString(reason));
  err.reason = reason;
  err.promise = promise;
  fatal(err, 'Unhandled Promise Rejection');
});

function initError(err, log) {
  if (state === EXITING) return; // an error came first: only one line
  if (log) logging.logError('Uncaught Exception', err);
  state = EXITING;
  worker.ref();
  send(invoke.errorLine('init_error', err), () => process.exit(EXIT_OK));
}

// --- Phase 2: specialise (the function is known) ------------------------------

// The `go` line, checked. Returns the runtime section; dies on a bad line.
function parseGo(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    die(`bad go line: ${e.message}`);
  }
  const bad = (why) => die(`bad go line: ${why}`);
  if (msg === null || typeof msg !== 'object' || msg.t !== 'go') bad('expected {"t":"go",…}');
  for (const key of ['uid', 'gid']) {
    if (!Number.isSafeInteger(msg[key]) || msg[key] <= 0) bad(`${key}: expected a positive integer (not root)`);
  }
  const rt = msg.runtime;
  if (rt === null || typeof rt !== 'object') bad('runtime: expected an object');
  if (rt.kind !== 'nodejs') bad(`runtime.kind: expected "nodejs", got ${JSON.stringify(rt.kind)}`);
  if (typeof rt.handler !== 'string' || rt.handler === '') bad('runtime.handler: expected a non-empty string');
  const env = rt.env;
  if (env === null || typeof env !== 'object' || Array.isArray(env)) bad('runtime.env: expected an object');
  for (const [k, v] of Object.entries(env)) {
    if (typeof v !== 'string' || k === '' || k.includes('=') || k.includes('\0') || v.includes('\0')) {
      bad(`runtime.env: ${JSON.stringify(k)}: expected a string value, names without '=' or NUL`);
    }
  }
  for (const key of ['function_name', 'function_version', 'invoked_function_arn', 'log_group_name', 'log_stream_name']) {
    if (rt[key] !== undefined && typeof rt[key] !== 'string') bad(`runtime.${key}: expected a string`);
  }
  if (rt.memory_limit_in_mb !== undefined && !Number.isSafeInteger(rt.memory_limit_in_mb)) {
    bad('runtime.memory_limit_in_mb: expected an integer');
  }
  return { uid: msg.uid, gid: msg.gid, rt };
}

// In parentheses: V8 compiles such a function eagerly, while the runtime is
// pre-started, rather than lazily on its first call, the cold start (about
// 0.2 ms).
const specialise = (async function specialise(line, started) {
  const { uid, gid, rt } = parseGo(line);

  // The function's user: supplementary groups first, then the gid, then the
  // uid (setuid drops CAP_SETGID, so it comes last).
  try {
    process.setgroups([]);
    process.setgid(gid);
    process.setuid(uid);
  } catch (e) {
    die(`cannot become uid ${uid} gid ${gid}: ${e.message}`);
  }
  if (process.getuid() !== uid || process.geteuid() !== uid || process.getgid() !== gid || process.getegid() !== gid) {
    die(`still uid ${process.getuid()} gid ${process.getgid()} after dropping to ${uid}/${gid}`);
  }
  fs.closeSync(controlFd);

  // The function's environment, wholesale (TZ among it: Node resets its
  // time zone when process.env.TZ is assigned).
  const env = rt.env;
  for (const key of Object.keys(process.env)) {
    if (!Object.prototype.hasOwnProperty.call(env, key)) delete process.env[key];
  }
  for (const key of Object.keys(env)) process.env[key] = env[key];

  const taskRoot = env.LAMBDA_TASK_ROOT || '/var/task';
  try {
    process.chdir(taskRoot);
  } catch (e) {
    die(`cannot enter the task root ${taskRoot}: ${e.message}`);
  }
  // CommonJS's global search paths come from NODE_PATH (layers under /opt,
  // the runtime's modules, the task root), read again now.
  Module._initPaths();
  // NODE_OPTIONS is read by node when it starts, before its function is
  // known: of its flags, the one that can be switched on later is.
  if (/(^|\s)--enable-source-maps(\s|$)/.test(env.NODE_OPTIONS || '')) process.setSourceMapsEnabled(true);

  logging.patchConsole(env);
  invoke.setFunction(rt);

  // The init phase: as during an invoke, only the function's own work keeps
  // the event loop alive.
  specialising = true;
  worker.unref();
  try {
    handler = await loader.loadHandler(taskRoot, rt.handler);
  } catch (e) {
    initError(e, true);
    return;
  }
  if (state !== INIT) return; // an uncaught error during init ended it
  state = SERVING;
  worker.ref();
  const ms = Math.round((performance.now() - started) * 1000) / 1000;
  send('{"t":"ready","init_ms":' + ms + '}\n');
  if (queued.length !== 0) startInvoke(queued.shift());
});

// --- Phase 1, continued --------------------------------------------------------

// The runtime's paths run once with stand-ins (a go line, the loader on
// the runtime's own modules, an invoke with a stand-in handler and channel,
// util.inspect as console.log uses it): V8 compiles a function when it is
// first called, and that first call should not be on the cold start.
const util = require('util');

async function dryRun() {
  parseGo('{"t":"go","uid":1,"gid":1,"runtime":{"kind":"nodejs","handler":"index.handler",' +
    '"env":{"TZ":":UTC"},"function_name":"f","memory_limit_in_mb":128}}');
  try {
    await loader.loadHandler(__dirname, 'prime.primed'); // an ES module, and not a function
  } catch (_) {}
  await loader.loadHandler(__dirname, 'errors.toWire'); // CommonJS
  logging.patchConsole({}); // again at go, with the function's settings
  util.format('%s %d %i %j %o %O', 's', 1, 2, { a: 1 }, [1], { b: 'c' }, 'extra');
  util.inspect({ a: [1, 'two', { three: 3n }], d: new Date(0), m: new Map([[1, 2]]), s: new Set([1]),
    e: new Error('prime'), f() {}, u: undefined, n: null, b: Buffer.alloc(2), [Symbol('k')]: true }, { depth: 4 });
  new Date().toISOString();
  performance.now();
  errors.toWire(new Error('prime'));
  errors.toLogJson(new Error('prime'));

  let answered;
  const answer = new Promise((resolve) => { answered = resolve; });
  const realSend = send;
  send = (line) => answered(line);
  handler = async (event, context) => {
    context.getRemainingTimeInMillis();
    return event;
  };
  state = SERVING;
  onLine('{"t":"invoke","request_id":"00000000-0000-0000-0000-000000000000","deadline_ms":0,' +
    '"invoked_function_arn":"","client_context":null,"identity":null,"payload":{"k":[1,"v",null]}}');
  JSON.parse(await answer);
  state = INIT;
  handler = null;
  send = realSend;
}

async function main() {
  await dryRun();
  if (typeof globalThis.gc === 'function') {
    globalThis.gc(); // start the function with a compact heap
    // Not Lambda's: the function does not get it (the property is not
    // configurable, so it stays, undefined).
    globalThis.gc = undefined;
  }
  // Nothing of the runtime runs until `go`: block on the control fd.
  logging.writeString(controlFd, '{"t":"loaded"}\n');
  let line;
  try {
    line = channel.readLineSync(controlFd);
  } catch (e) {
    die(`reading the control fd: ${e.message}`);
  }
  const started = performance.now();
  if (line === null) process.exit(EXIT_OK);
  await specialise(line, started);
}

main().catch((e) => die(`unexpected failure: ${e && e.stack}`));

'use strict';
// The function's log: fds 1 and 2, a pipe to the supervisor.
//
// Every write is synchronous (write(2) on the blocking fd) so that all of an
// invoke's output is in the pipe before its response goes out on the worker
// channel (docs/architecture.md § Worker channel). Node's own
// process.stdout/stderr for a pipe would be a libuv stream: it sets
// O_NONBLOCK on the pipe (shared with whoever else holds it) and queues a
// write the pipe cannot take at once, so they are replaced by streams that
// write synchronously.
//
// console.log/info/warn/error/debug/trace/fatal write one record each, as
// Lambda's Node runtime does: `<ISO time>\t<request id>\t<LEVEL>\t<message>`,
// newlines inside the message turned into CR so the record stays one line;
// or, with AWS_LAMBDA_LOG_FORMAT=JSON, one JSON object per line. Records
// below AWS_LAMBDA_LOG_LEVEL are dropped.

const fs = require('fs');
const util = require('util');
const { Writable } = require('stream');
const errors = require('./errors');

const STDOUT = 1;
const STDERR = 2;

// Lambda's levels, lowest first.
const LEVELS = { TRACE: 1, DEBUG: 2, INFO: 3, WARN: 4, ERROR: 5, FATAL: 6 };

// Global lookup used by Lambda's runtime (and tools reading it) for the
// request id of the invoke in progress.
const REQUEST_ID_SYMBOL = Symbol.for('aws.lambda.runtime.requestId');

// A sleep without the event loop, for a pipe that is full while someone has
// made it non-blocking: Atomics.wait on a private buffer.
const sleepCell = new Int32Array(new SharedArrayBuffer(4));

// Write all of `buf` to `fd`. A full pipe blocks (the supervisor drains it);
// a closed one drops the output rather than failing the invoke.
function writeAll(fd, buf) {
  let off = 0;
  const len = buf.length;
  while (off < len) {
    try {
      off += fs.writeSync(fd, buf, off, len - off);
    } catch (e) {
      if (e.code === 'EAGAIN') {
        Atomics.wait(sleepCell, 0, 0, 1);
        continue;
      }
      if (e.code === 'EINTR') continue;
      return; // EPIPE, EBADF: nobody reads the log any more
    }
  }
}

function writeString(fd, s) {
  writeAll(fd, Buffer.from(s, 'utf8'));
}

// process.stdout / process.stderr: bytes pass through unchanged, at once.
class SyncFdStream extends Writable {
  constructor(fd) {
    super({ decodeStrings: false, emitClose: false });
    this.fd = fd;
    this._type = 'fs';
    this._isStdio = true;
    this.isTTY = false;
  }

  _write(chunk, encoding, callback) {
    writeAll(this.fd, typeof chunk === 'string' ? Buffer.from(chunk, encoding) : chunk);
    callback();
  }

  // Never close fds 1 and 2 (as Node's own stdio streams).
  _destroy(err, callback) {
    callback(err);
  }
}

function installStdio() {
  const out = new SyncFdStream(STDOUT);
  const err = new SyncFdStream(STDERR);
  Object.defineProperty(process, 'stdout', { get: () => out, configurable: true, enumerable: true });
  Object.defineProperty(process, 'stderr', { get: () => err, configurable: true, enumerable: true });
}

// --- records ---------------------------------------------------------------

let requestId; // undefined outside an invoke, printed "undefined" as on Lambda

function setRequestId(id) {
  requestId = id;
  globalThis[REQUEST_ID_SYMBOL] = id;
}

const CR_RE = /\n/g;

function textRecord(level, args) {
  let line = new Date().toISOString() + '\t' + requestId + '\t' + level + '\t' + util.format.apply(null, args);
  if (line.indexOf('\n') !== -1) line = line.replace(CR_RE, '\r');
  writeString(STDOUT, line + '\n');
}

function jsonRecord(level, args) {
  const rec = { timestamp: new Date().toISOString(), level, requestId, message: undefined };
  let line;
  if (args.length === 1) {
    rec.message = args[0];
    try {
      line = JSON.stringify(rec, jsonErrorReplacer);
    } catch (_) {
      rec.message = util.format(args[0]);
      line = JSON.stringify(rec);
    }
  } else {
    rec.message = util.format.apply(null, args);
    for (const a of args) {
      if (a instanceof Error) {
        rec.errorType = a.name;
        rec.errorMessage = a.message;
        rec.stackTrace = typeof a.stack === 'string' ? a.stack.split('\n') : [];
        break;
      }
    }
    line = JSON.stringify(rec);
  }
  if (line.indexOf('\n') !== -1) line = line.replace(CR_RE, '\r');
  writeString(STDOUT, line + '\n');
}

function jsonErrorReplacer(_key, v) {
  if (v instanceof Error) {
    const out = { errorType: v.name, errorMessage: v.message, stackTrace: typeof v.stack === 'string' ? v.stack.split('\n') : v.stack };
    return Object.assign(out, v);
  }
  return v;
}

let record = textRecord;
let jsonFormat = false;

function nop() {}

// Replace the console's logging methods, for the function's log level and
// format (AWS_LAMBDA_LOG_LEVEL, AWS_LAMBDA_LOG_FORMAT of its environment).
function patchConsole(env) {
  jsonFormat = typeof env.AWS_LAMBDA_LOG_FORMAT === 'string' && env.AWS_LAMBDA_LOG_FORMAT.toUpperCase() === 'JSON';
  record = jsonFormat ? jsonRecord : textRecord;
  const wanted = typeof env.AWS_LAMBDA_LOG_LEVEL === 'string' ? LEVELS[env.AWS_LAMBDA_LOG_LEVEL.toUpperCase()] : undefined;
  const min = wanted || LEVELS.TRACE;
  const method = (level) => (LEVELS[level] >= min ? (...args) => record(level, args) : nop);
  console.trace = method('TRACE');
  console.debug = method('DEBUG');
  console.info = method('INFO');
  console.log = console.info;
  console.warn = method('WARN');
  console.error = method('ERROR');
  console.fatal = method('FATAL');
}

// An error as Lambda's runtime logs it: `<title> \t{json}` at level ERROR
// (text), or the error itself as the record's message (JSON). Never
// filtered: the error of an invoke is always in its log.
function logError(title, e) {
  if (jsonFormat) {
    record('ERROR', [e instanceof Error ? e : new Error(errors.safeString(e))]);
  } else {
    record('ERROR', [title, '\t' + errors.toLogJson(e)]);
  }
}

module.exports = {
  writeAll,
  writeString,
  installStdio,
  patchConsole,
  setRequestId,
  logError,
  STDERR,
};

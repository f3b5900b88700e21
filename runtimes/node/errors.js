'use strict';
// Errors of the Node runtime: the Runtime.* faults it raises itself, and the
// two shapes an error takes on the way out, following Lambda's Node runtime:
//
// * on the worker channel, {errorType, errorMessage, trace} (what Lambda's
//   Runtime API returns to the caller for a Node function);
// * in the log, one record `Invoke Error \t{...}` whose JSON carries the
//   error's own enumerable properties and its stack as a list of lines.

const util = require('util');

// Lambda's limit on a synchronous response, in bytes.
const MAX_RESPONSE_BYTES = 6291556;

const IMPORT_MODULE_ERROR = 'Runtime.ImportModuleError';
const USER_CODE_SYNTAX_ERROR = 'Runtime.UserCodeSyntaxError';
const HANDLER_NOT_FOUND = 'Runtime.HandlerNotFound';
const MALFORMED_HANDLER_NAME = 'Runtime.MalformedHandlerName';
const MARSHAL_ERROR = 'Runtime.MarshalError';
const CONTEXT_UNMARSHAL_ERROR = 'Runtime.LambdaContextUnmarshalError';
const UNHANDLED_PROMISE_REJECTION = 'Runtime.UnhandledPromiseRejection';
const NODE_JS_EXIT = 'Runtime.NodeJsExit';
const RESPONSE_SIZE_TOO_LARGE = 'Function.ResponseSizeTooLarge';

// A fault of the runtime's own: an Error whose name is the wire errorType.
// One class per type, the name on its prototype, so that the stack's first
// line (written when the error is made) reads "Runtime.X: message".
class RuntimeFault extends Error {}
const faultClasses = new Map();
for (const type of [IMPORT_MODULE_ERROR, USER_CODE_SYNTAX_ERROR, HANDLER_NOT_FOUND, MALFORMED_HANDLER_NAME,
  MARSHAL_ERROR, CONTEXT_UNMARSHAL_ERROR, UNHANDLED_PROMISE_REJECTION, NODE_JS_EXIT, RESPONSE_SIZE_TOO_LARGE]) {
  const cls = class extends RuntimeFault {};
  Object.defineProperty(cls.prototype, 'name', { value: type, writable: true, configurable: true });
  faultClasses.set(type, cls);
}

// A fault whose message is a string, or, wrapping an error of user code,
// String(cause) as Lambda's runtime does ("SyntaxError: Unexpected token").
function fault(type, messageOrCause) {
  const cls = faultClasses.get(type);
  const err = new cls(typeof messageOrCause === 'string' ? messageOrCause : safeString(messageOrCause));
  Error.captureStackTrace(err, fault); // the trace starts where the fault was found
  return err;
}

const NODE_JS_EXIT_MESSAGE =
  'The Lambda runtime client detected an unexpected Node.js exit code. This is most commonly ' +
  'caused by a Promise that was never settled. For more information, see ' +
  'https://nodejs.org/docs/latest/api/process.html#exit-codes';

function safeString(value) {
  try {
    return String(value);
  } catch (_) {
    return Object.prototype.toString.call(value);
  }
}

// An Error, or something that looks like one (an error from another realm,
// say): Lambda's runtime tests the same properties.
function isErrorLike(e) {
  if (util.types.isNativeError(e)) return true;
  return e !== null && typeof e === 'object' &&
    typeof e.name === 'string' && e.name !== '' &&
    typeof e.message === 'string' && e.message !== '' &&
    typeof e.stack === 'string' && e.stack !== '';
}

function errorName(e) {
  const name = e.name;
  if (typeof name === 'string' && name !== '') return name;
  const ctor = e.constructor;
  return (ctor && typeof ctor.name === 'string' && ctor.name) || 'Error';
}

// The error of an invoke as the worker channel carries it. A thrown
// non-Error is reported as Lambda does: its typeof and its string, no trace.
function toWire(e) {
  try {
    if (isErrorLike(e)) {
      const stack = e.stack;
      return {
        errorType: errorName(e),
        errorMessage: typeof e.message === 'string' ? e.message : safeString(e.message),
        trace: typeof stack === 'string' ? stack.split('\n') : [],
      };
    }
    return { errorType: typeof e, errorMessage: String(e), trace: [] };
  } catch (_) {
    return {
      errorType: 'handled',
      errorMessage: 'callback called with Error argument, but there was a problem while retrieving one or more of its message, name, and stack',
      trace: [],
    };
  }
}

// The JSON of an error in a log record: errorType, errorMessage, code, the
// error's own enumerable properties, its stack as lines (nested errors, a
// `cause` say, the same way).
function logReplacer(_key, v) {
  if (v instanceof Error) {
    const out = { errorType: errorName(v), errorMessage: v.message, code: v.code };
    Object.assign(out, v);
    if (typeof v.stack === 'string') out.stack = v.stack.split('\n');
    return out;
  }
  return v;
}

function toLogJson(e) {
  // Lambda logs a non-Error as an Error made from it.
  const err = e instanceof Error ? e : new Error(safeString(e));
  try {
    return JSON.stringify(err, logReplacer);
  } catch (_) {
    const w = toWire(err);
    return JSON.stringify({ errorType: w.errorType, errorMessage: w.errorMessage, stack: w.trace });
  }
}

module.exports = {
  MAX_RESPONSE_BYTES,
  RuntimeFault,
  fault,
  IMPORT_MODULE_ERROR,
  USER_CODE_SYNTAX_ERROR,
  HANDLER_NOT_FOUND,
  MALFORMED_HANDLER_NAME,
  MARSHAL_ERROR,
  CONTEXT_UNMARSHAL_ERROR,
  UNHANDLED_PROMISE_REJECTION,
  NODE_JS_EXIT,
  NODE_JS_EXIT_MESSAGE,
  RESPONSE_SIZE_TOO_LARGE,
  safeString,
  toWire,
  toLogJson,
};

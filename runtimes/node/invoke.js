'use strict';
// One invoke: the context object the handler gets, the ways it may finish
// (a returned promise, the callback, context.succeed/fail/done, the event
// loop running empty) and the response each makes, as in Lambda's Node
// runtime.
//
// An Invocation finishes exactly once; whichever of its completions comes
// first wins and later ones are ignored. The response line goes to `respond`
// (given by bootstrap.js), which owns the channel.

const errors = require('./errors');
const logging = require('./logging');

// Per-environment values of the context, fixed when the runtime is
// specialised.
const fn = {
  functionName: undefined,
  functionVersion: undefined,
  invokedFunctionArn: undefined,
  memoryLimitInMB: undefined, // a string, as on Lambda
  logGroupName: undefined,
  logStreamName: undefined,
};

function setFunction(rt) {
  fn.functionName = rt.function_name;
  fn.functionVersion = rt.function_version;
  fn.invokedFunctionArn = rt.invoked_function_arn;
  fn.memoryLimitInMB = rt.memory_limit_in_mb === undefined || rt.memory_limit_in_mb === null ? undefined : String(rt.memory_limit_in_mb);
  fn.logGroupName = rt.log_group_name;
  fn.logStreamName = rt.log_stream_name;
}

// client_context / identity as the supervisor sends them: null, an object,
// the JSON text (as Lambda's Runtime API headers carry it), or that text in
// base64 (as Invoke's X-Amz-Client-Context carries it).
function jsonHeader(value, what) {
  if (value === null || value === undefined) return undefined;
  if (typeof value === 'object') return value;
  let parsed;
  try {
    try {
      parsed = JSON.parse(value);
    } catch (e) {
      const text = Buffer.from(value, 'base64').toString('utf8');
      try {
        parsed = JSON.parse(text);
      } catch (_) {
        throw e;
      }
    }
  } catch (e) {
    throw errors.fault(errors.CONTEXT_UNMARSHAL_ERROR, `Unable to parse ${what} JSON: ${e.message}`);
  }
  return parsed === null ? undefined : parsed;
}

function identityOf(value) {
  const id = jsonHeader(value, 'Cognito Identity');
  if (id === undefined || typeof id !== 'object') return undefined;
  return { cognitoIdentityId: id.cognitoIdentityId, cognitoIdentityPoolId: id.cognitoIdentityPoolId };
}

// Completion states of an invocation.
const RUNNING = 0; // the handler has not finished
const WAITING = 1; // the callback gave a result; sent when the event loop is empty
const DONE = 2; // the response is out (or going out)

class Invocation {
  // msg: the invoke line, parsed and checked. respond(line, isError): sends
  // the response line.
  constructor(msg, respond) {
    this.requestId = msg.request_id;
    this.state = RUNNING;
    this.completed = false; // a completion has been called (first wins)
    this.thenable = false; // the handler returned a promise
    this.pending = undefined; // the result kept while WAITING
    this.respond = respond;

    const done = (err, result) => {
      if (this.completed) return;
      this.completed = true;
      if (err !== undefined && err !== null) this.error(err);
      else this.result(result);
    };
    this.done = done;
    this.succeed = (result) => done(null, result);
    this.fail = (err) => done(err === undefined || err === null ? 'handled' : err);
    const deadline = msg.deadline_ms;
    const context = {
      callbackWaitsForEmptyEventLoop: true,
      succeed: this.succeed,
      fail: this.fail,
      done,
      functionVersion: fn.functionVersion,
      functionName: fn.functionName,
      memoryLimitInMB: fn.memoryLimitInMB,
      logGroupName: fn.logGroupName,
      logStreamName: fn.logStreamName,
      clientContext: undefined,
      identity: undefined,
      invokedFunctionArn: msg.invoked_function_arn || fn.invokedFunctionArn,
      awsRequestId: msg.request_id,
      getRemainingTimeInMillis: () => deadline - Date.now(),
    };
    this.context = context;
    // The callback: an error is reported at once; a result, as Lambda does,
    // once the event loop is empty unless the function said not to wait.
    this.callback = (err, result) => {
      if (this.completed) return;
      this.completed = true;
      if (err !== undefined && err !== null) this.error(err);
      else if (context.callbackWaitsForEmptyEventLoop) {
        this.state = WAITING;
        this.pending = result;
      } else this.result(result);
    };
  }

  // Run the handler. Its errors, sync or async, become the invoke's error.
  run(handler, msg) {
    const context = this.context;
    try {
      context.clientContext = jsonHeader(msg.client_context, 'Client Context');
      context.identity = identityOf(msg.identity);
    } catch (e) {
      this.completed = true;
      this.error(e);
      return;
    }
    let ret;
    try {
      ret = handler(msg.payload, context, this.callback);
      if (ret !== null && (typeof ret === 'object' || typeof ret === 'function') && typeof ret.then === 'function') {
        this.thenable = true;
        ret.then(this.succeed, this.fail);
      }
    } catch (e) {
      this.fail(e);
    }
  }

  // The event loop has nothing left to do (process 'beforeExit'): a result
  // the callback left waiting goes out now; a handler that never finished
  // gets null (it returned no promise: Lambda's "forgot the callback") or
  // Runtime.NodeJsExit (its promise can no longer settle).
  loopEmpty() {
    if (this.state === WAITING) {
      this.result(this.pending);
    } else if (this.state === RUNNING && !this.completed) {
      this.completed = true;
      if (this.thenable) this.error(errors.fault(errors.NODE_JS_EXIT, errors.NODE_JS_EXIT_MESSAGE));
      else this.result(null);
    }
  }

  result(value) {
    if (this.state === DONE) return;
    let body;
    try {
      body = JSON.stringify(value === undefined ? null : value);
    } catch (_) {
      this.error(errors.fault(errors.MARSHAL_ERROR, 'Unable to stringify response body'));
      return;
    }
    if (body === undefined) body = 'null'; // a function or symbol: no JSON
    // Bytes >= UTF-16 units >= bytes / 3: count the bytes only when it matters.
    if (body.length * 3 > errors.MAX_RESPONSE_BYTES) {
      const size = Buffer.byteLength(body, 'utf8');
      if (size > errors.MAX_RESPONSE_BYTES) {
        this.error(errors.fault(errors.RESPONSE_SIZE_TOO_LARGE,
          `Response payload size (${size} bytes) exceeded maximum allowed payload size (${errors.MAX_RESPONSE_BYTES} bytes).`));
        return;
      }
    }
    this.state = DONE;
    this.respond('{"t":"result","payload":' + body + '}\n', false);
  }

  // title: the log record's title, or null when the error is logged already.
  error(err, title = 'Invoke Error') {
    if (this.state === DONE) return;
    this.state = DONE;
    if (title !== null) logging.logError(title, err);
    this.respond(errorLine('error', err), true);
  }
}

function errorLine(t, err) {
  return JSON.stringify({ t, error: errors.toWire(err) }) + '\n';
}

module.exports = { Invocation, setFunction, errorLine, DONE };

"""The worker loop of a Python environment (docs/architecture.md § runtime,
§ Worker channel).

Four parts, named after the side of the fork they run on:

* ``relocate(host, sandbox)`` runs in the zygote: it points the zygote's own
  modules at their files inside the sandbox (the interpreter's installation
  is mounted at the sandbox prefix), once, so that no B has to.
* ``prepare(runtime)`` runs in B, with the specialisation: it checks the
  ``runtime`` section and computes what B applies (sys.path, the interpreter
  paths under the sandbox prefix).
* ``prime()`` runs in a blank B before it waits for a function: the set-up
  no function changes (stdio objects, caches, the logging handler).
* ``main(rt, worker_fd)`` runs in B once the sandbox plan is applied: it makes
  the process look like a fresh interpreter of Lambda's Python runtime (the
  function's environment, sys.path, the ``logging`` setup), imports the
  handler's module (the init phase), reports ``ready`` or ``init_error``,
  then serves invokes one at a time over the worker socket,
  newline-delimited JSON both ways.

Behaviour follows Lambda's Python runtime (awslambdaric): the handler
signature, the context object, the error shapes and messages, the log line
format. The zygote imports this module; nothing here imports user code until
``main`` runs in B.
"""

import base64
import decimal
import gc
import importlib
import json
import linecache
import logging
import os
import socket
import sys
import time
import traceback

# Lambda's limit on a synchronous response, in bytes.
MAX_RESPONSE_BYTES = 6_291_556
# Layers of Python code go here (Lambda: "python" and "python/lib/pythonX.Y/site-packages").
OPT_PYTHON = "/opt/python"
OPT_SITE_PACKAGES = f"/opt/python/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
# Lambda's log line for the root logger (awslambdaric's text format).
LOG_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n"
LOG_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
# Error log lines: one record whose lines are joined by CR, indentation in
# no-break spaces, so a log reader keeps a traceback together.
ERROR_LINE_SEPARATOR = "\r"
ERROR_INDENT = "\u00a0"

# awslambdaric's FaultException types.
IMPORT_MODULE_ERROR = "Runtime.ImportModuleError"
USER_CODE_SYNTAX_ERROR = "Runtime.UserCodeSyntaxError"
HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"
MALFORMED_HANDLER_NAME = "Runtime.MalformedHandlerName"
BUILT_IN_MODULE_CONFLICT = "Runtime.BuiltInModuleConflict"
MARSHAL_ERROR = "Runtime.MarshalError"
CONTEXT_UNMARSHAL_ERROR = "Runtime.LambdaContextUnmarshalError"
RESPONSE_SIZE_TOO_LARGE = "Function.ResponseSizeTooLarge"

# The request id the logging filter stamps on records; set per invoke.
_request_id = ""


class Fault(Exception):
    """An error of the runtime's own (not an exception of the user's code)."""

    def __init__(self, error_type, message, trace=None):
        super().__init__(message)
        self.error_type, self.message, self.trace = error_type, message, trace


# ---------------------------------------------------------------------------
# The context object (awslambdaric's LambdaContext and friends).
# ---------------------------------------------------------------------------


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, identity_id=None, pool_id=None):
        self.cognito_identity_id = identity_id
        self.cognito_identity_pool_id = pool_id

    def __repr__(self):
        return (f"CognitoIdentity([cognito_identity_id={self.cognito_identity_id},"
                f"cognito_identity_pool_id={self.cognito_identity_pool_id}])")


class Client:
    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")

    def __repr__(self):
        return "Client([" + ",".join(f"{k}={getattr(self, k)}" for k in self.__slots__) + "])"


class ClientContext:
    __slots__ = ("custom", "env", "client")

    def __repr__(self):
        return f"ClientContext([custom={self.custom},env={self.env},client={self.client}])"


def _from_dict(cls, values):
    """An instance of a __slots__ class with its fields taken from a dict (missing: None)."""
    obj = cls()
    for field in cls.__slots__:
        setattr(obj, field, values.get(field))
    return obj


class LambdaContext:
    """The handler's `context`. As on Lambda, memory_limit_in_mb is a string
    (awslambdaric reads it from AWS_LAMBDA_FUNCTION_MEMORY_SIZE)."""

    def __init__(self, request_id, deadline_ms, invoked_function_arn, client_context, identity, tenant_id):
        self.aws_request_id = request_id
        self.log_group_name = _static.log_group_name
        self.log_stream_name = _static.log_stream_name
        self.function_name = _static.function_name
        self.memory_limit_in_mb = _static.memory_limit_in_mb
        self.function_version = _static.function_version
        self.invoked_function_arn = invoked_function_arn
        self.tenant_id = tenant_id
        self.client_context = client_context
        self.identity = identity
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        remaining = self._deadline_ms - int(time.time() * 1000)
        return remaining if remaining > 0 else 0

    def log(self, msg):
        sys.stdout.write(str(msg))

    def __repr__(self):
        return (f"LambdaContext([aws_request_id={self.aws_request_id},"
                f"log_group_name={self.log_group_name},log_stream_name={self.log_stream_name},"
                f"function_name={self.function_name},memory_limit_in_mb={self.memory_limit_in_mb},"
                f"function_version={self.function_version},invoked_function_arn={self.invoked_function_arn},"
                f"client_context={self.client_context},identity={self.identity},tenant_id={self.tenant_id}])")


class _Static:
    """Per-environment values of the context, fixed at init."""

    log_group_name = log_stream_name = function_name = memory_limit_in_mb = function_version = None
    invoked_function_arn = None


_static = _Static()


def _json_header(value, name):
    """client_context / identity as the supervisor sends them: null, an
    object, the JSON text (as Lambda's Runtime API headers carry it), or
    that text in base64 (as Invoke's X-Amz-Client-Context carries it)."""
    if value is None or type(value) is dict:
        return value
    try:
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = json.loads(base64.b64decode(value, validate=True))
        if parsed is None or type(parsed) is dict:
            return parsed
        raise ValueError(f"expected an object, got {type(parsed).__name__}")
    except Exception as e:
        raise Fault(CONTEXT_UNMARSHAL_ERROR, f"Unable to parse {name} JSON: {e}") from None


def _make_context(msg):
    client_context = _json_header(msg.get("client_context"), "Client Context")
    if client_context is not None:
        client_context = _from_dict(ClientContext, client_context)
        if client_context.client is not None:
            client_context.client = _from_dict(Client, client_context.client)
    identity = _json_header(msg.get("identity"), "Cognito Identity")
    if identity is None:
        identity = CognitoIdentity()
    else:
        identity = CognitoIdentity(identity.get("cognitoIdentityId"), identity.get("cognitoIdentityPoolId"))
    return LambdaContext(
        msg["request_id"],
        msg["deadline_ms"],
        msg.get("invoked_function_arn") or _static.invoked_function_arn,
        client_context,
        identity,
        msg.get("tenant_id"),
    )


# ---------------------------------------------------------------------------
# Results and errors.
# ---------------------------------------------------------------------------


def _default(o):
    """Lambda's encoder also takes Decimal (DynamoDB hands those out): an
    integral one becomes a JSON integer, any other a float."""
    if isinstance(o, decimal.Decimal):
        if o.is_finite() and o == o.to_integral_value():
            return int(o)
        return float(o)
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def _make_encoder(ensure_ascii):
    """json.dumps(separators=(",", ":"), allow_nan=False) without its
    per-call Python overhead: the C encoder json.JSONEncoder builds inside
    encode(), called directly (half the time for a small result). NaN and
    infinity are refused: the result is embedded in the supervisor's JSON
    line, where they are not JSON."""
    c_make_encoder = json.encoder.c_make_encoder
    if c_make_encoder is None:  # not CPython's accelerated json
        return json.JSONEncoder(ensure_ascii=ensure_ascii, allow_nan=False, separators=(",", ":"), default=_default).encode
    encode_str = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    join = "".join

    def encode(o):
        # A fresh markers dict each time: a failed encode leaves ids behind.
        return join(c_make_encoder({}, _default, encode_str, None, ":", ",", False, False, False)(o, 0))

    return encode


_encode = _make_encoder(ensure_ascii=False)
_encode_ascii = _make_encoder(ensure_ascii=True)


def _marshal(result):
    """The handler's return value as JSON bytes, or a Fault."""
    try:
        if isinstance(result, (bytes, bytearray)):
            # Lambda passes bytes through as the raw response; the wire here
            # carries JSON, so bytes must be a JSON text.
            body = bytes(result)
            json.loads(body)
        else:
            text = _encode(result)
            try:
                body = text.encode()
            except UnicodeEncodeError:  # lone surrogates: escape them instead
                body = _encode_ascii(result).encode()
    except Exception as e:
        raise Fault(MARSHAL_ERROR, f"Unable to marshal response: {e}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise Fault(
            RESPONSE_SIZE_TOO_LARGE,
            f"Response payload size ({len(body)} bytes) exceeded maximum allowed payload size "
            f"({MAX_RESPONSE_BYTES} bytes).",
        )
    return body


def _error(message, error_type, trace, request_id=""):
    return {
        "errorMessage": message or "",
        "errorType": error_type or "",
        "requestId": request_id or "",
        "stackTrace": trace or [],
    }


def _user_error(exc, request_id):
    """An exception from user code: its type, message and Lambda's stack
    trace (traceback.format_list of (file, line, function, code) tuples,
    leading frames of this bootstrap dropped, as awslambdaric does)."""
    frames = traceback.extract_tb(exc.__traceback__)
    for i, frame in enumerate(frames):
        if "/bootstrap.py" not in frame.filename:
            frames = frames[i:]
            break
    tuples = []
    for frame in frames:
        filename, line = frame.filename, frame.line
        # Modules the zygote loaded were compiled under the host prefix;
        # show them where the function sees them.
        if _prefix_host and filename.startswith(_prefix_host):
            filename = _prefix_sandbox + filename[len(_prefix_host):]
            line = linecache.getline(filename, frame.lineno).strip()
        tuples.append((filename, frame.lineno, frame.name, line))
    return _error(str(exc), type(exc).__name__, traceback.format_list(tuples), request_id)


def _fault_error(fault, request_id=""):
    return _error(fault.message, fault.error_type, fault.trace, request_id)


def _log_error(err):
    """Log an error the way Lambda does: one record, CR-separated lines."""
    head = "[ERROR]"
    if err["errorType"]:
        head += " " + err["errorType"]
    if err["errorMessage"]:
        head += (":" if err["errorType"] else "") + " " + err["errorMessage"]
    lines = [head, "Traceback (most recent call last):"]
    for entry in err["stackTrace"]:
        for line in entry.splitlines() or [""]:
            stripped = line.lstrip(" ")
            lines.append(ERROR_INDENT * (len(line) - len(stripped)) + stripped)
    try:
        sys.stdout.write(ERROR_LINE_SEPARATOR.join(lines) + "\n")
    except Exception:
        pass


def _flush_stdio():
    """Every line of output goes to the log pipe before the response."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


# ---------------------------------------------------------------------------
# prepare: runs in the zygote, before the fork.
# ---------------------------------------------------------------------------

# (prefix_host, prefix_sandbox) the zygote's modules point at now, and what
# they pointed at before (object, attribute, value), to undo it.
_relocated = None
_original_paths = []


class Runtime:
    """A checked `runtime` section, with what B needs computed in advance."""

    __slots__ = ("kind", "handler", "env", "prefix_host", "prefix_sandbox", "sys_attrs", "sys_path",
                 "command", "cwd",
                 "function_name", "function_version", "invoked_function_arn",
                 "log_group_name", "log_stream_name", "memory_limit_in_mb")


def _mover(host, sandbox):
    def moved(path):
        if type(path) is str and (path == host or path.startswith(host + "/")):
            return sandbox + path[len(host):]
        return path
    return moved


def _module_paths():
    """(object, attribute, value) of every path the zygote's modules hold."""
    out = []
    for module in list(sys.modules.values()):
        for attr in ("__file__", "__cached__"):
            value = getattr(module, attr, None)
            if type(value) is str:
                out.append((module, attr, value))
        path = getattr(module, "__path__", None)
        if type(path) is list:
            out.append((module, "__path__", list(path)))
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            for attr in ("origin", "cached"):
                value = getattr(spec, attr, None)
                if type(value) is str:
                    out.append((spec, attr, value))
            # importlib.resources finds a package's files through its loader.
            loader = spec.loader
            if type(getattr(loader, "path", None)) is str:
                out.append((loader, "path", loader.path))
    return out


def _relocate_modules(host, sandbox):
    """Point the modules the zygote loaded at their files inside the sandbox.

    Done here, once per prefix pair, not in every B: in B each object
    touched is a page copied (a write to a shared page), ~600 of them.
    A package's __path__ keeps the host directory after the sandbox one, so
    the zygote itself can still import submodules."""
    global _relocated, _original_paths
    if _relocated == (host, sandbox):
        return
    if _relocated is None:
        _original_paths = _module_paths()
    moved = _mover(host, sandbox)
    for obj, attr, value in _original_paths:
        try:
            if attr == "__path__":
                # In place: spec.submodule_search_locations is the same list.
                obj.__path__[:] = [moved(p) for p in value] + [p for p in value if moved(p) != p]
            else:
                setattr(obj, attr, moved(value))
        except (AttributeError, TypeError):
            pass  # a read-only attribute: leave it
    _relocated = (host, sandbox)


_relocated_given = None


def relocate(host, sandbox):
    """In the zygote, before forking a blank: point the zygote's modules at
    the interpreter's installation as the sandbox mounts it. `host` must be
    this interpreter's prefix. Raises ValueError."""
    global _relocated_given
    host, sandbox = host.rstrip("/"), sandbox.rstrip("/")
    if not (host.startswith("/") and sandbox.startswith("/")):
        raise ValueError("runtime.python_prefix_host/python_prefix_sandbox: expected absolute paths")
    # Relocation rewrites the zygote's own paths: the prefix must be the
    # zygote interpreter's, or the sandbox would get paths that do not exist.
    if os.path.realpath(host) != os.path.realpath(sys.base_prefix):
        raise ValueError(f"runtime.python_prefix_host: {host} is not this interpreter's prefix {sys.base_prefix}")
    _relocated_given = os.path.normpath(host)
    _relocate_modules(sys.base_prefix.rstrip("/"), sandbox)


def prepare(runtime):
    """Check the supervisor's `runtime` section (it arrives in B with the
    specialisation) and compute what B applies. Raises ValueError naming the
    field."""
    if type(runtime) is not dict:
        raise ValueError("runtime: expected an object")
    for key in ("handler", "python_prefix_host", "python_prefix_sandbox"):
        if type(runtime.get(key)) is not str or not runtime[key]:
            raise ValueError(f"runtime.{key}: expected a non-empty string")
    env = runtime.get("env")
    if type(env) is not dict or not all(
        type(v) is str and k and "=" not in k and "\0" not in k + v for k, v in env.items()
    ):
        raise ValueError("runtime.env: expected an object of strings (names without '=' or NUL)")
    host, sandbox = runtime["python_prefix_host"].rstrip("/"), runtime["python_prefix_sandbox"].rstrip("/")
    # The zygote relocated its modules for this pair before forking (relocate).
    if _relocated is None or _relocated[1] != sandbox or os.path.normpath(host) not in (_relocated[0], _relocated_given):
        raise ValueError(f"runtime.python_prefix_*: {host} -> {sandbox} is not the pair the zygote relocated for ({_relocated})")
    host = _relocated[0]

    # python3 (this module's main), provided (provided.main: the
    # function's own bootstrap, over the Runtime API) or nodejs (nodehost.main:
    # the node B started before the specialisation).
    kind = runtime.get("kind", "python3")
    if kind not in ("python3", "provided", "nodejs"):
        raise ValueError(f"runtime.kind: expected python3, provided or nodejs, got {kind!r}")

    rt = Runtime()
    rt.kind = kind
    # A container image (provided only): the argv to start instead of
    # /var/task/bootstrap, and its working directory.
    rt.command, rt.cwd = runtime.get("command"), runtime.get("cwd")
    if rt.command is not None and (kind != "provided" or type(rt.command) is not list or not rt.command
                                   or not all(type(a) is str and "\0" not in a for a in rt.command)):
        raise ValueError("runtime.command: expected a non-empty list of strings, for kind provided")
    if rt.cwd is not None and (type(rt.cwd) is not str or not rt.cwd.startswith("/")):
        raise ValueError("runtime.cwd: expected an absolute path")
    rt.handler, rt.env, rt.prefix_host, rt.prefix_sandbox = runtime["handler"], env, host, sandbox
    for key in ("function_name", "function_version", "invoked_function_arn", "log_group_name", "log_stream_name"):
        setattr(rt, key, runtime.get(key))
    memory = runtime.get("memory_limit_in_mb")
    rt.memory_limit_in_mb = None if memory is None else str(memory)  # a str, as on Lambda

    moved = _mover(host, sandbox)
    rt.sys_attrs = [
        (name, moved(getattr(sys, name)))
        for name in ("prefix", "exec_prefix", "base_prefix", "base_exec_prefix",
                     "executable", "_base_executable", "_stdlib_dir")
        if hasattr(sys, name)
    ]
    # Lambda's order: the function's code, layers, PYTHONPATH, then the
    # interpreter's own paths (under the sandbox prefix).
    first = [env.get("LAMBDA_TASK_ROOT", "/var/task"), OPT_SITE_PACKAGES, OPT_PYTHON]
    first += [p for p in env.get("PYTHONPATH", "").split(":") if p and p not in first]
    rt.sys_path = first + [p for p in map(moved, sys.path) if p not in first]
    return rt


# ---------------------------------------------------------------------------
# Init, in B.
# ---------------------------------------------------------------------------

# Prefixes for tracebacks: code the zygote compiled names host paths.
_prefix_host = ""
_prefix_sandbox = ""


class _RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.aws_request_id = _request_id
        return True


class _LambdaLogHandler(logging.Handler):
    """The root logger's handler: Lambda's text format, on stdout."""

    def emit(self, record):
        try:
            sys.stdout.write(self.format(record))
        except Exception:
            self.handleError(record)


# Built once in the zygote; B only attaches it.
_log_handler = _LambdaLogHandler()
_log_handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
_log_handler.addFilter(_RequestIdFilter())


def _setup_logging(level_name):
    # As on Lambda: the root logger keeps Python's WARNING unless the
    # function sets AWS_LAMBDA_LOG_LEVEL (TRACE means DEBUG there). Its
    # handler was added by prime().
    level = {"TRACE": "DEBUG"}.get(level_name.upper(), level_name.upper())
    if level and level in logging._nameToLevel:
        logging.getLogger().setLevel(level)


def _load_handler(handler):
    """Import the handler's module and find the function (awslambdaric's
    _get_handler: the same checks, types and messages)."""
    try:
        modname, fname = handler.rsplit(".", 1)
    except ValueError as e:
        raise Fault(MALFORMED_HANDLER_NAME, f"Bad handler '{handler}': {e}") from None
    try:
        if modname.split(".")[0] in sys.builtin_module_names:
            raise Fault(BUILT_IN_MODULE_CONFLICT, f"Cannot use built-in module {modname} as a handler module")
        module = importlib.import_module(modname.replace("/", "."))
    except ImportError as e:
        raise Fault(IMPORT_MODULE_ERROR, f"Unable to import module '{modname}': {e}") from None
    except SyntaxError as e:
        trace = [f'  File "{e.filename}" Line {e.lineno}\n    {e.text}']
        raise Fault(USER_CODE_SYNTAX_ERROR, f"Syntax error in module '{modname}': {e}", trace) from None
    try:
        return getattr(module, fname)
    except AttributeError:
        raise Fault(HANDLER_NOT_FOUND, f"Handler '{fname}' missing on module '{modname}'") from None


# The invoke line is compact JSON from the supervisor: its C scanner, without
# json.loads' encoding detection and whitespace handling around it.
_scan = json.decoder.JSONDecoder().scan_once
# Large enough for a typical invoke line in one recv, small enough that the
# buffer comes from the heap, not a fresh mmap (256 KiB measured 5x slower).
RECV_BYTES = 65536


def _lines(recv):
    """The newline-terminated lines of a stream, without the newline: one
    recv per line when it fits in RECV_BYTES."""
    parts = []  # the start of a line whose end has not arrived yet
    while True:
        chunk = recv(RECV_BYTES)
        if not chunk:
            return
        start = 0
        end = chunk.find(b"\n")
        while end >= 0:
            if parts:
                parts.append(chunk[start:end])
                yield b"".join(parts)
                parts = []
            else:
                yield chunk[start:end]
            start = end + 1
            end = chunk.find(b"\n", start)
        if start < len(chunk):
            parts.append(chunk[start:])


def _send_line(sock, obj):
    sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def prime():
    """In a blank B, before it waits for a function: everything of the
    runtime's set-up that no function changes, so that a cold start is left
    with the function's own part (its environment, sys.path, the import).
    The pages this touches are copied now, off the invoke path."""
    # Output goes to the log pipe line by line, in the order it was written.
    # New stream objects: the zygote's were made for the fds it started
    # with (a terminal or file, seekable perhaps), not for the pipe behind
    # fds 1 and 2 now. Their FileIOs do not own the fds (closefd=False).
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, encoding="utf-8", errors="strict", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stdin = sys.__stdin__ = open(0, "r", encoding="utf-8", closefd=False)
    # The finders cached for the zygote's host paths are stale in here.
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    linecache.clearcache()
    sys.argv[:] = [""]
    # Lambda's timestamps are UTC, for every formatter.
    logging.Formatter.converter = time.gmtime
    logging.getLogger().addHandler(_log_handler)


def main(rt, worker_fd):
    """B's life after the sandbox: init, then serve invokes until the
    supervisor closes the worker socket. Never returns. `prime` ran before."""
    global _request_id, _prefix_host, _prefix_sandbox
    started = time.perf_counter()

    # The environment is the function's, wholesale.
    os.environ.clear()
    os.environ.update(rt.env)
    time.tzset()  # TZ is the function's now (Lambda sets ":UTC")

    # The interpreter's installation is mounted at prefix_sandbox (as
    # /var/lang on Lambda).
    _prefix_host, _prefix_sandbox = rt.prefix_host, rt.prefix_sandbox
    for name, value in rt.sys_attrs:
        setattr(sys, name, value)
    sys.path[:] = rt.sys_path
    sys.path_importer_cache.clear()

    _static.function_name = rt.function_name
    _static.function_version = rt.function_version
    _static.invoked_function_arn = rt.invoked_function_arn
    _static.log_group_name = rt.log_group_name
    _static.log_stream_name = rt.log_stream_name
    _static.memory_limit_in_mb = rt.memory_limit_in_mb

    _setup_logging(rt.env.get("AWS_LAMBDA_LOG_LEVEL", ""))
    # The zygote ran with the collector off; the function's code gets the
    # usual collector (the zygote's objects stay frozen, shared with it).
    gc.enable()

    sock = socket.socket(fileno=worker_fd)

    # Init phase.
    try:
        handler = _load_handler(rt.handler)
    except Fault as f:
        init_error = _fault_error(f)
    except Exception as e:
        init_error = _user_error(e, "")
    else:
        init_error = None
    init_ms = (time.perf_counter() - started) * 1000
    if init_error is not None:
        _log_error(init_error)
        _flush_stdio()
        _send_line(sock, {"t": "init_error", "error": init_error})
        os._exit(0)
    _flush_stdio()
    _send_line(sock, {"t": "ready", "init_ms": round(init_ms, 3)})

    # Invoke phase: one at a time, one line in, one line out. Every
    # microsecond here is on the warm round trip: one recv, one send, no
    # imports, no other syscalls.
    sendall = sock.sendall
    environ = os.environ
    traced = "_X_AMZN_TRACE_ID" in environ
    for line in _lines(sock.recv):
        msg, end = _scan(line.decode(), 0)
        if type(msg) is not dict or msg.get("t") != "invoke" or end != len(line):
            raise RuntimeError(f"unexpected line on the worker channel: {line[:200]!r}")
        request_id = _request_id = msg["request_id"]
        # As awslambdaric: the invoke's X-Ray trace id, or none at all.
        trace_id = msg.get("xray_trace_id")
        if trace_id is not None:
            environ["_X_AMZN_TRACE_ID"] = trace_id
            traced = True
        elif traced:
            environ.pop("_X_AMZN_TRACE_ID", None)
            traced = False
        try:
            context = _make_context(msg)
            body = _marshal(handler(msg["payload"], context))
        except Fault as f:
            error = _fault_error(f, request_id)
        except Exception as e:
            error = _user_error(e, request_id)
        else:
            _flush_stdio()
            sendall(b'{"t":"result","payload":' + body + b"}\n")
            continue
        _log_error(error)
        _flush_stdio()
        _send_line(sock, {"t": "error", "error": error})
    # The supervisor closed the channel: this environment is done.
    _flush_stdio()
    os._exit(0)

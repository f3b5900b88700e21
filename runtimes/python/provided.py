"""The custom runtime (`provided`): Lambda's Runtime API served inside the
environment to the function's own `bootstrap` (docs/architecture.md
§ Custom runtimes).

``main(rt, worker_fd)`` runs in B once the sandbox plan is applied, in place
of ``bootstrap.main``. It serves the Runtime API (version 2018-06-01) on
127.0.0.1:9001 of the environment's own network namespace, starts the
function's executable ``bootstrap`` (/var/task/bootstrap, else /opt/bootstrap)
as its child, and translates between the two sides:

* the worker channel's ``invoke`` line becomes the answer to the bootstrap's
  pending ``GET /runtime/invocation/next``;
* ``POST /runtime/invocation/{id}/response`` and ``…/error`` become the
  channel's ``result`` and ``error`` lines; ``POST /runtime/init/error`` its
  ``init_error`` line;
* the bootstrap's first ``/next`` is the end of the init phase (``ready``).

The bootstrap's stdout and stderr are B's, the log pipe. If it exits, B
exits with its status, and the supervisor reports Runtime.ExitError as for a
crashed Python runtime. Statuses and error bodies follow Lambda's Runtime
Interface Emulator.

One thread (the main one) owns the state; the HTTP handler threads, the
worker channel reader and the child's waiter only post events to it.
"""

import base64
# Imported here, in the zygote, what the request handling imports lazily
# (http.client's header parsing builds email.message objects): in a
# container image's environment B's interpreter is reachable only at
# /.lambdalet/python, and nothing should need loading after the fork.
import email.feedparser
import email.message
import email.parser
import http.server
import json
import os
import queue
import socket
import socketserver
import subprocess
import threading
import time

API_HOST = "127.0.0.1"
API_PORT = 9001
# The paths Lambda looks for a custom runtime's entry point at, in order.
BOOTSTRAP_PATHS = ("/var/task/bootstrap", "/opt/bootstrap")
# Lambda's limit on a synchronous response, in bytes (as bootstrap.py).
MAX_RESPONSE_BYTES = 6_291_556
# Largest error or init error body taken from the runtime.
MAX_ERROR_BYTES = 1_048_576
PREFIX = "/2018-06-01/runtime/"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"


def _error(message, error_type, trace=None, request_id=""):
    return {"errorMessage": message, "errorType": error_type, "requestId": request_id, "stackTrace": trace or []}


def _api_error(status, error_type, message):
    """A Runtime API error answer: (status, JSON body), as the emulator's."""
    return status, json.dumps({"errorMessage": message, "errorType": error_type}).encode()


ACCEPTED = (202, b'{"status":"OK"}\n')


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection of the bootstrap. Each request becomes an event for
    the main thread, whose answer (status, body, headers) it writes."""

    protocol_version = "HTTP/1.1"  # keep-alive: runtime clients reuse one connection
    server_version = "lambdalet"
    sys_version = ""

    def log_message(self, *args):
        pass  # the function's log is the function's

    def _read_body(self, limit):
        """The request body, or None if it is over `limit` bytes (read and
        dropped, so the runtime gets its 413 on a usable connection)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts, size = [], 0
            while True:
                line = self.rfile.readline(1024)
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts) if size <= limit else None
                size += n
                chunk = self.rfile.read(n)
                if size <= limit:
                    parts.append(chunk)
                else:
                    parts = []
                self.rfile.readline(16)
        length = int(self.headers.get("Content-Length") or 0)
        if length <= limit:
            return self.rfile.read(length) if length else b""
        while length > 0:
            got = self.rfile.read(min(length, 1 << 20))
            if not got:
                break
            length -= len(got)
        return None

    def _answer(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _ask(self, *event):
        reply = queue.Queue(1)
        self.server.events.put(event + (reply,))
        status, body, headers, done = reply.get()
        try:
            self._answer(status, body, headers)
            self.wfile.flush()
        finally:
            if done is not None:
                done.set()

    def do_GET(self):
        if self.path == PREFIX + "invocation/next":
            return self._ask("next")
        self._not_found()

    def do_POST(self):
        path = self.path
        if path == PREFIX + "init/error":
            body = self._read_body(MAX_ERROR_BYTES)
            return self._ask("init_error", body, self.headers.get(ERROR_TYPE_HEADER))
        if path.startswith(PREFIX + "invocation/"):
            request_id, _, what = path[len(PREFIX + "invocation/"):].partition("/")
            if request_id and what in ("response", "error"):
                body = self._read_body(MAX_RESPONSE_BYTES)
                return self._ask(what, request_id, body, self.headers.get(ERROR_TYPE_HEADER))
        self._not_found()

    def _not_found(self):
        self._answer(404, b"404 page not found\n")

    do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_found


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        # Not HTTPServer's: it resolves the host's FQDN, a DNS lookup (and
        # an import of the idna codec) for a name nobody reads.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        pass  # a broken connection of the runtime's is the runtime's


def _listen(events):
    """The Runtime API's server, on 127.0.0.1:9001, or an ephemeral port if
    9001 is taken (an environment on the host's network shares its ports)."""
    for port in (API_PORT, 0):
        try:
            server = _Server((API_HOST, port), _Handler)
        except OSError:
            if port == 0:
                raise
            continue
        server.events = events
        return server


def _json_header(value):
    """client_context / identity as a header: the JSON text (the supervisor
    may hand an object, JSON text or base64 of it, see bootstrap._json_header)."""
    if value is None:
        return None
    if type(value) is not str:
        return json.dumps(value, separators=(",", ":"))
    try:
        json.loads(value)
        return value
    except ValueError:
        try:
            return base64.b64decode(value, validate=True).decode()
        except Exception:
            return value


def _next_answer(msg, default_arn):
    payload = json.dumps(msg.get("payload"), separators=(",", ":"), ensure_ascii=False).encode()
    headers = [
        ("Lambda-Runtime-Aws-Request-Id", msg["request_id"]),
        ("Lambda-Runtime-Deadline-Ms", str(msg["deadline_ms"])),
        ("Lambda-Runtime-Invoked-Function-Arn", msg.get("invoked_function_arn") or default_arn or ""),
    ]
    if msg.get("xray_trace_id"):
        headers.append(("Lambda-Runtime-Trace-Id", msg["xray_trace_id"]))
    for key, name in (("client_context", "Lambda-Runtime-Client-Context"),
                      ("identity", "Lambda-Runtime-Cognito-Identity")):
        value = _json_header(msg.get(key))
        if value is not None:
            headers.append((name, value))
    if msg.get("tenant_id"):
        headers.append(("Lambda-Runtime-Aws-Tenant-Id", msg["tenant_id"]))
    return 200, payload, headers, None


def _error_body(body, header_type, request_id):
    """What the runtime posted to …/error or init/error, as Lambda's error
    body: its JSON object if it sent one (errorType defaulting to the
    header's), else the header's type with the text as the message."""
    try:
        obj = json.loads(body) if body else None
    except ValueError:
        obj = None
    if type(obj) is dict:
        if not obj.get("errorType") and header_type:
            obj["errorType"] = header_type
        if request_id:
            obj.setdefault("requestId", request_id)
        return obj
    text = (body or b"").decode("utf-8", "replace")
    return _error(text, header_type or "Unhandled", None, request_id)


def _result_line(body):
    """The worker channel's result line. The channel carries JSON: a body
    that is not JSON goes as a JSON string (docs: Known differences)."""
    if not body.strip():
        body = b"null"  # an empty response: no value
    try:
        json.loads(body)
    except ValueError:
        body = json.dumps(body.decode("utf-8", "replace")).encode()
    return b'{"t":"result","payload":' + body + b"}\n"


def _find_bootstrap():
    for path in BOOTSTRAP_PATHS:
        if os.path.isfile(path):
            return path
    return None


def _exit_code(status):
    """B's exit status for the bootstrap's wait status (Popen.returncode)."""
    return status if status >= 0 else 128 + (-status)


def main(rt, worker_fd):
    """B's life as a custom runtime. Never returns."""
    started = time.perf_counter()
    sock = socket.socket(fileno=worker_fd)
    send = sock.sendall

    def send_line(obj):
        send(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def fail_init(error):
        send_line({"t": "init_error", "error": error})
        os._exit(0)

    events = queue.Queue()
    try:
        server = _listen(events)
    except OSError as e:
        fail_init(_error(f"cannot serve the Runtime API on {API_HOST}:{API_PORT}: {e}", "Runtime.Unknown"))
    address = f"{API_HOST}:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, name="runtime-api", daemon=True).start()

    env = dict(rt.env)
    env["AWS_LAMBDA_RUNTIME_API"] = address
    os.environ.clear()
    os.environ.update(env)

    if rt.command:
        # A container image: its Entrypoint + Cmd, found on the image's PATH
        # (the env's, as execvpe does), in its WorkingDir.
        argv, cwd = rt.command, rt.cwd or "/"
        path = argv[0]
        if not os.path.isdir(cwd):
            fail_init(_error(f"WorkingDirectory {cwd} is not a directory of the image",
                             "Runtime.InvalidWorkingDir"))
    else:
        path = _find_bootstrap()
        if path is None:
            fail_init(_error(f"Couldn't find valid bootstrap(s): [{' '.join(BOOTSTRAP_PATHS)}]",
                             "Runtime.InvalidEntrypoint"))
        argv, cwd = [path], env.get("LAMBDA_TASK_ROOT", "/var/task")
    try:
        child = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, close_fds=True)
    except OSError as e:
        print(f"lambdalet: cannot start {path}: {e}", flush=True)
        fail_init(_error(f"fork/exec {path}: {e.strerror or e}", "Runtime.InvalidEntrypoint"))

    def wait_child():
        events.put(("exit", child.wait()))

    def read_channel():
        parts = []  # the start of a line whose end has not arrived yet
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                events.put(("closed",))
                return
            start = 0
            end = chunk.find(b"\n")
            while end >= 0:
                parts.append(chunk[start:end])
                line, parts = b"".join(parts), []
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = line[:200]  # refused by the main thread
                events.put(("invoke", msg))
                start = end + 1
                end = chunk.find(b"\n", start)
            if start < len(chunk):
                parts.append(chunk[start:])

    threading.Thread(target=wait_child, name="bootstrap-wait", daemon=True).start()

    # The state, owned by this thread: `ready` once the first /next came;
    # `current` the invoke handed out and not answered yet; `pending` an
    # invoke no /next has taken yet; `waiter` the reply of a /next that waits.
    ready = False
    current = pending = waiter = None
    default_arn = rt.invoked_function_arn

    def end(code):
        child_kill()
        try:
            server.socket.close()
        finally:
            os._exit(code)

    def child_kill():
        if child.poll() is None:
            try:
                child.kill()
            except OSError:
                pass

    while True:
        event = events.get()
        kind = event[0]
        if kind == "next":
            reply = event[-1]
            if not ready:
                ready = True
                init_ms = (time.perf_counter() - started) * 1000
                send_line({"t": "ready", "init_ms": round(init_ms, 3)})
                threading.Thread(target=read_channel, name="worker-channel", daemon=True).start()
            if waiter is not None:
                # A second /next while one waits: the first one's connection
                # is left behind by the runtime; the newer one gets the event.
                waiter.put(_api_error(400, "InvalidStateTransition", "another /next is waiting") + ((), None))
            if pending is not None:
                current, pending = pending, None
                reply.put(_next_answer(current, default_arn))
            else:
                waiter = reply
        elif kind == "invoke":
            msg = event[1]
            if type(msg) is not dict or msg.get("t") != "invoke":
                raise RuntimeError(f"unexpected line on the worker channel: {str(msg)[:200]}")
            if waiter is not None:
                current = msg
                waiter.put(_next_answer(msg, default_arn))
                waiter = None
            else:
                pending = msg
        elif kind in ("response", "error"):
            _, request_id, body, header_type, reply = event
            if current is None or request_id != current["request_id"]:
                if not ready:
                    reply.put(_api_error(403, "InvalidStateTransition",
                                         f"State transition from Initializing to {kind.capitalize()} failed")
                              + ((), None))
                else:
                    reply.put(_api_error(400, "InvalidRequestID", "Invalid request ID") + ((), None))
                continue
            if body is None:  # over the limit: the invoke fails, as on Lambda
                send_line({"t": "error", "error": _error(
                    f"Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
                    "Function.ResponseSizeTooLarge", None, request_id)})
                current = None
                reply.put(_api_error(413, "RequestEntityTooLarge",
                                     f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).")
                          + ((), None))
                continue
            if kind == "response":
                send(_result_line(body))
            else:
                send_line({"t": "error", "error": _error_body(body, header_type, request_id)})
            current = None
            reply.put(ACCEPTED + ((), None))
        elif kind == "init_error":
            _, body, header_type, reply = event
            if ready:
                reply.put(_api_error(403, "InvalidStateTransition",
                                     "State transition from Ready to InitError failed") + ((), None))
                continue
            error = _error_body(body if body is not None else b"", header_type, "")
            done = threading.Event()
            reply.put(ACCEPTED + ((), done))
            done.wait(1.0)  # the runtime gets its 202 before the environment ends
            child_kill()
            fail_init(error)
        elif kind == "exit":
            # The runtime is gone: so is the environment (Runtime.ExitError,
            # or an init failure before the first /next).
            end(_exit_code(event[1]))
        elif kind == "closed":
            # The supervisor ended this environment.
            end(0)

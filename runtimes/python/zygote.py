"""The Python zygote (docs/architecture.md § Zygote channel).

Started by the supervisor as ``PYTHON -I -B zygote.py`` with an AF_UNIX
SOCK_SEQPACKET channel on fd 3 (LAMBDALET_ZYGOTE_FD). It imports the runtime
(sandbox, bootstrap, provided) and the standard modules functions commonly use, never
user code, freezes its heap, says hello, and then forks one child per spawn
request:

    zygote ── fork ──► A: sandbox.enter_a: setsid, cgroups, unshare, fork ──► B
                       A: _exit(0)          B: sandbox.enter_blank, says "blank",
                                               waits for "specialize": sandbox.specialize,
                                               bootstrap.prepare, bootstrap.main
                                               (provided.main for a custom runtime)

The zygote stays single-threaded (fork(2) copies only the calling thread), is
not a child subreaper (B goes to the supervisor when A exits), reaps A on
SIGCHLD, and exits when the supervisor closes the channel.
"""

import time

_started = time.perf_counter()

import gc

# No collections in the zygote: what a collection frees leaves holes that
# later allocations fill, dirtying pages every child still shares. The
# serving loop makes little cyclic garbage; gc.freeze() before each fork
# keeps the children's collectors off the zygote's objects (gc.freeze docs).
gc.disable()

import importlib.util
import json
import os
import platform
import select
import signal
import socket
import sys
import threading

RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
MAX_DATAGRAM = 1 << 20  # a spawn request, at most
SPAWN_FDS = 2  # [worker_socket, log_pipe_write_end]

# Standard modules a handler typically imports, loaded once here and shared
# copy-on-write by every environment. Third-party packages are never
# preloaded: a function's own copy in /var/task must win.
PRELOAD = (
    "base64", "binascii", "calendar", "collections", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "email.utils", "enum", "functools",
    "gzip", "hashlib", "hmac", "http.client", "io", "ipaddress", "itertools",
    "logging", "math", "operator", "pathlib", "random", "re", "secrets",
    "shutil", "string", "struct", "tempfile", "textwrap", "threading", "typing",
    "urllib.parse", "urllib.request", "uuid", "zlib",
)


def _load(name, filename):
    """Import a runtime file under a private module name, so that a
    function's own `sandbox` or `bootstrap` module does not collide."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(RUNTIME_DIR, filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sandbox = _load("_lambdalet_sandbox", "sandbox.py")
bootstrap = _load("_lambdalet_bootstrap", "bootstrap.py")
provided = _load("_lambdalet_provided", "provided.py")
nodehost = _load("_lambdalet_nodehost", "nodehost.py")
nodehost.bind(sandbox)
for _name in PRELOAD:
    importlib.import_module(_name)
# Site .pth files may have imported third-party packages (certifi, say).
# Forget them: a function importing its own copy must get that copy.
for _name, _module in list(sys.modules.items()):
    _file = getattr(_module, "__file__", None) or ""
    if "/site-packages/" in _file or "/dist-packages/" in _file:
        del sys.modules[_name]
del _name, _module, _file

def _send(chan, obj):
    chan.send(json.dumps(obj, separators=(",", ":")).encode())


def _close_fds(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Zygote:
    def __init__(self, chan):
        self.chan = chan
        self.buf = bytearray(MAX_DATAGRAM)
        self.view = memoryview(self.buf)
        self.ancbufsize = socket.CMSG_SPACE(SPAWN_FDS * 4)
        self.children = {}  # pid of A -> env_id
        # SIGCHLD wakes the poll below through this pipe
        # (signal.set_wakeup_fd); the handler itself does nothing.
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w)
        self.poll = select.poll()
        self.poll.register(chan.fileno(), select.POLLIN)
        self.poll.register(self.wake_r, select.POLLIN)

    def serve(self):
        while True:
            for fd, _ in self.poll.poll():
                if fd == self.wake_r:
                    self.reap()
                elif not self.receive():
                    return

    def reap(self):
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            env_id = self.children.pop(pid, "?")
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                # A failed before B existed; its error is in the log pipe.
                print(f"lambdalet: zygote: A of {env_id} (pid {pid}) exited with {code}", file=sys.stderr, flush=True)

    def receive(self):
        """Handle one datagram; False at EOF (the supervisor is gone)."""
        # MSG_CMSG_CLOEXEC: the passed fds must not leak into anything the
        # zygote or a child execs (B clears it only where it must).
        n, ancdata, flags, _ = self.chan.recvmsg_into([self.buf], self.ancbufsize, socket.MSG_CMSG_CLOEXEC)
        fds = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(memoryview(data).cast("i")[: len(data) // 4])
        if n == 0 and not fds:
            return False
        env_id = ""
        request = None
        try:
            if flags & socket.MSG_TRUNC:
                raise ValueError(f"spawn request over {MAX_DATAGRAM} bytes")
            if flags & socket.MSG_CTRUNC or len(fds) != SPAWN_FDS:
                raise ValueError(f"expected {SPAWN_FDS} fds, got {len(fds)}")
            # A spawn request holds no secrets: a function's environment
            # reaches its environment only, with the specialisation.
            request = json.loads(str(self.view[:n], "utf-8"))
            if type(request) is not dict or request.get("t") != "spawn":
                raise ValueError("expected {\"t\":\"spawn\",...}")
            env_id = request.get("env_id")
            if type(env_id) is not str:
                env_id = ""
                raise ValueError("env_id: expected a string")
            plan = sandbox.prepare(request.get("sandbox"))
            runtime = request.get("runtime")
            if type(runtime) is not dict:
                raise ValueError("runtime: expected an object")
            bootstrap.relocate(str(runtime.get("python_prefix_host")), str(runtime.get("python_prefix_sandbox")))
            node = nodehost.prepare(runtime.get("node"))
        except (ValueError, UnicodeDecodeError) as e:
            _close_fds(fds)
            _send(self.chan, {"t": "spawn_failed", "env_id": env_id, "error": f"bad spawn request: {e}"})
            return True

        pid = self.fork(plan, node, fds, env_id)
        _close_fds(fds)  # the child has its copies; the supervisor watches them
        if pid is not None:
            self.children[pid] = env_id
            _send(self.chan, {"t": "spawned", "env_id": env_id, "pid": pid})
        return True

    def fork(self, plan, node, fds, env_id):
        # Everything allocated since the last fork is frozen too, so the
        # child's collector never walks (and un-shares) the zygote's objects.
        gc.freeze()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as e:
            _send(self.chan, {"t": "spawn_failed", "env_id": env_id, "error": f"fork: {e}"})
            return None
        if pid == 0:
            self.run_child(plan, node, *fds)  # never returns
        return pid

    def run_child(self, plan, node, worker_fd, log_fd):
        """A, then B: a blank, then the function's environment once the
        supervisor specialises it. Never returns into the zygote's loop.
        With `node`, B starts a node process first (nodehost)."""
        code = 1
        try:
            # Nothing of the zygote's own plumbing goes along.
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.chan.close()
            sandbox.enter_a(plan, log_fd)  # A exits in there; B returns
            worker_fd = sandbox.enter_blank(plan, worker_fd, log_fd)
            bootstrap.prime()
            started = None if node is None else nodehost.prestart(node, worker_fd, plan.cap_last_cap)
            spec, raw_runtime = _await_specialization(worker_fd)
            try:
                spec = sandbox.prepare_specialize(spec, plan.cap_last_cap)
                runtime = bootstrap.prepare(raw_runtime)
                if (started is not None) != (runtime.kind == "nodejs"):
                    raise ValueError(f"runtime.kind {runtime.kind} in a {'node' if started else 'python'} blank")
            except ValueError as e:
                print(f"lambdalet: sandbox: bad specialisation: {e}", file=sys.stderr, flush=True)
                os._exit(sandbox.EXIT_SANDBOX_FAILED)
            if started is not None:
                nodehost.main(started, spec, raw_runtime, worker_fd)  # never returns
            sandbox.specialize(spec)
            if runtime.kind == "provided":
                provided.main(runtime, worker_fd)
            else:
                bootstrap.main(runtime, worker_fd)
        except SystemExit as e:
            code = e.code if type(e.code) is int else (0 if e.code is None else 1)
            if e.code is not None and type(e.code) is not int:
                print(e.code, file=sys.stderr)
        except BaseException:
            try:
                import traceback
                traceback.print_exc()
            except BaseException:
                pass
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


def _await_specialization(worker_fd):
    """In a blank B: say so, then wait for the one line that assigns it a
    function (docs/architecture.md § Worker channel). The supervisor sends
    nothing else before the environment is ready, so no byte past that line
    can have been read."""
    os.write(worker_fd, b'{"t":"blank"}\n')
    parts = []
    while True:
        # A node blank's node shares this socket's file description, and
        # node makes its fds non-blocking: wait for data rather than spin.
        select.select([worker_fd], [], [])
        try:
            chunk = os.read(worker_fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            os._exit(0)  # the supervisor gave up this blank
        parts.append(chunk)
        if chunk.endswith(b"\n"):
            break
    msg = json.loads(b"".join(parts))
    if type(msg) is not dict or msg.get("t") != "specialize":
        print(f"lambdalet: sandbox: expected a specialize line, got {str(msg)[:200]}", file=sys.stderr, flush=True)
        os._exit(sandbox.EXIT_SANDBOX_FAILED)
    return msg.get("sandbox"), msg.get("runtime")


def main():
    fd = int(os.environ.get("LAMBDALET_ZYGOTE_FD", "3"))
    chan = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    zygote = Zygote(chan)
    # The finders cached for the zygote's own imports name host paths that
    # every B has to forget; dropping them here, once, spares each B from
    # freeing them (each object freed is a shared page copied).
    sys.path_importer_cache.clear()
    gc.collect()
    gc.freeze()
    if threading.active_count() != 1:
        raise SystemExit("lambdalet: zygote: a preloaded module started a thread; fork would be unsafe")
    _send(chan, {
        "t": "hello",
        "pid": os.getpid(),
        "python": platform.python_version(),
        "preload_ms": round((time.perf_counter() - _started) * 1000, 3),
    })
    zygote.serve()


if __name__ == "__main__":
    main()

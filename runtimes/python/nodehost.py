"""Node.js environments: B keeps a pre-started node (docs/architecture.md
§ Node.js environments).

Node cannot be forked like the Python zygote, so a node blank holds a node
process already started: B, the blank's PID 1 (root, every capability),
forks C, which gives up all it can before any JavaScript runs and execs
node on lambdalet's Node.js runtime (/var/runtime/node/bootstrap.js). The
runtime loads itself, says ``loaded`` on a private control socket, and
waits. Only then does B say ``blank``.

At the specialisation, B runs the mount steps (the function's code at
/var/task, /tmp…), which C sees since they share the mount namespace, sets
C's rlimits with prlimit(2), and sends C ``go`` with the function's uid, gid
and runtime section. C drops to that uid itself (node has setgroups, setgid
and setuid), loads the handler and talks to the supervisor directly on the
worker socket it inherited. B drops its own privileges exactly like a Python
environment, closes its copy of the worker socket and stays as the PID
namespace's init: it reaps orphans and exits with C's status when C ends.

    prepare(node)            in the zygote: check the spawn request's "node"
    prestart(plan, worker)   in B, after steps 2-8: fork C, wait for loaded
    main(...)                in B, at the specialisation; never returns
"""

import base64
import ctypes
import json
import os
import resource
import signal
import socket
import sys

_sandbox = None  # the zygote's sandbox module (bound by `bind`)

# Kept by C across execve, so that node can drop to the function's ids
# itself: CAP_SETGID and CAP_SETUID (<linux/capability.h>).
CAP_SETGID = 6
CAP_SETUID = 7
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_NODE_FIELDS = {"path", "args", "seccomp_bpf"}
_LOADED = b'{"t":"loaded"}\n'


def bind(sandbox):
    """The zygote's private copy of sandbox.py (its syscall wrappers)."""
    global _sandbox
    _sandbox = sandbox


class NodePlan:
    """A checked ``node`` section: how C execs node."""

    __slots__ = ("path", "argv", "seccomp_prog", "_seccomp_buf", "cap_data", "cap_header")


def prepare(node):
    """Check the spawn request's ``node`` section (absent: a Python blank).
    Raises ValueError naming the field."""
    if node is None:
        return None
    if type(node) is not dict or set(node) != _NODE_FIELDS:
        raise ValueError(f"runtime.node: expected exactly {sorted(_NODE_FIELDS)}")
    p = NodePlan()
    path = node["path"]
    if type(path) is not str or not path.startswith("/") or "\0" in path:
        raise ValueError("runtime.node.path: expected an absolute path")
    args = node["args"]
    if type(args) is not list or not all(type(a) is str and "\0" not in a for a in args):
        raise ValueError("runtime.node.args: expected a list of strings")
    p.path = os.fsencode(path)
    p.argv = [p.path] + [os.fsencode(a) for a in args]
    if type(node["seccomp_bpf"]) is not str:
        raise ValueError("runtime.node.seccomp_bpf: expected base64")
    bpf = base64.b64decode(node["seccomp_bpf"], validate=True)
    count, rest = divmod(len(bpf), _sandbox.SOCK_FILTER_SIZE)
    if rest or not 0 < count <= _sandbox.BPF_MAXINSNS:
        raise ValueError(f"runtime.node.seccomp_bpf: {len(bpf)} bytes is not 1..={_sandbox.BPF_MAXINSNS} struct sock_filter")
    p._seccomp_buf = ctypes.create_string_buffer(bpf, len(bpf))
    p.seccomp_prog = _sandbox._SockFprog(count, ctypes.addressof(p._seccomp_buf))
    p.cap_header = _sandbox._CapHeader(_sandbox.LINUX_CAPABILITY_VERSION_3, 0)
    keep = (1 << CAP_SETGID) | (1 << CAP_SETUID)
    p.cap_data = (_sandbox._CapData * 2)()
    p.cap_data[0].effective = p.cap_data[0].permitted = keep
    return p


class Started:
    """C, as B knows it."""

    __slots__ = ("pid", "control")


def prestart(plan, worker_fd, cap_last_cap):
    """In B, after steps 2-8: fork C and wait until node has loaded the
    runtime. Exits 121 if node cannot start."""
    sb = _sandbox
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as err:
        sb._fail(2, "fork node", err)
    if pid == 0:
        _exec_node(plan, worker_fd, theirs.fileno(), ours.fileno(), cap_last_cap)  # never returns
    theirs.close()
    started = Started()
    started.pid, started.control = pid, ours
    # The runtime's first line; nothing else comes before "go".
    got = b""
    while not got.endswith(b"\n"):
        chunk = ours.recv(64)
        if not chunk:
            _, status = os.waitpid(pid, 0)
            print(f"lambdalet: node runtime: node exited before it was loaded ({_describe_status(status)})",
                  file=sys.stderr, flush=True)
            os._exit(sb.EXIT_SANDBOX_FAILED)
        got += chunk
    if got != _LOADED:
        print(f"lambdalet: node runtime: expected {_LOADED!r}, got {got[:200]!r}", file=sys.stderr, flush=True)
        os._exit(sb.EXIT_SANDBOX_FAILED)
    return started


def _exec_node(plan, worker_fd, control_fd, other_fd, cap_last_cap):
    """In C: keep only CAP_SETUID and CAP_SETGID, no_new_privs, the seccomp
    filter, then exec node. Nothing of the function is known yet, so no
    JavaScript of a function can run before C has dropped to its uid."""
    sb = _sandbox
    step = "node: close"
    try:
        os.close(other_fd)
        # Both fds cross execve; nothing else does (B has only 0-2, the
        # worker socket and these).
        os.set_inheritable(worker_fd, True)
        os.set_inheritable(control_fd, True)
        step = "node: drop bounding set"
        for cap in range(cap_last_cap + 1):
            if cap not in (CAP_SETGID, CAP_SETUID):
                sb._check(sb._prctl(sb.PR_CAPBSET_DROP, cap, 0, 0, 0))
        step = "node: clear ambient capabilities"
        sb._check(sb._prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
        step = "node: capset"
        sb._check(sb._syscall(ctypes.c_long(sb._NR["capset"]), ctypes.byref(plan.cap_header), ctypes.byref(plan.cap_data)))
        step = "node: no_new_privs"
        sb._check(sb._prctl(sb.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        step = "node: seccomp"
        sb._check(sb._syscall(
            ctypes.c_long(sb._NR["seccomp"]),
            ctypes.c_long(sb.SECCOMP_SET_MODE_FILTER),
            ctypes.c_long(0),
            ctypes.byref(plan.seccomp_prog),
        ))
        step = f"node: exec {os.fsdecode(plan.path)}"
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.execve(plan.path, plan.argv, {
            "LAMBDALET_WORKER_FD": str(worker_fd),
            "LAMBDALET_CONTROL_FD": str(control_fd),
            "TZ": ":UTC",
        })
    except BaseException as err:
        sb._fail(2, step, err)


def _describe_status(status):
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _exit_code(status):
    """C's status as B's own: its exit code, or 128+N for signal N (as a
    shell reports it, and as the Python runtime's crashes are reported)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def main(started, spec, runtime, worker_fd):
    """In B, at the specialisation: steps 9-13 for B, C's rlimits and its
    "go" in between; then init duties until C ends. Never returns."""
    sb = _sandbox
    go = {
        "t": "go",
        "uid": spec.uid,
        "gid": spec.gid,
        "runtime": {k: v for k, v in runtime.items() if not k.startswith("python_")},
    }
    line = json.dumps(go, separators=(",", ":")).encode() + b"\n"

    def hand_over():
        # After the mount steps (C sees them) and B's own rlimits, while B
        # still has CAP_SYS_RESOURCE: C's limits, then its go.
        for res, soft, hard in spec.rlimits:
            resource.prlimit(started.pid, res, (soft, hard))
        started.control.sendall(line)
        started.control.close()

    sb.specialize(spec, hand_over)
    # C owns the worker socket now: the supervisor sees it close when C ends.
    os.close(worker_fd)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == started.pid:
            sys.stdout.flush()
            os._exit(_exit_code(status))

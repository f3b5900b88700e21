"""Apply a sandbox plan: the Python side of docs/architecture.md, steps 1-13.

Four parts, named after the side of the fork and the moment they run at:

* ``prepare(plan)`` runs in the zygote, before the fork. It checks the blank
  plan computed by the supervisor (src/sandbox/plan.rs) and turns it into
  ready arguments: byte paths already prefixed with ``new_root``. A bad plan
  is reported as ``spawn_failed`` and nothing is forked.
* ``enter_a(plan, log_fd)`` runs in A, the zygote's fresh child (step 1):
  setsid, join the cgroups, unshare, fork B. A exits at once; the call returns
  only in B.
* ``enter_blank(plan, worker_fd, log_fd)`` runs in B (steps 2-8): the blank,
  namespaced and pivoted into the generic root, still root.
* ``prepare_specialize(spec, cap_last_cap)`` and ``specialize(spec)`` run in
  B when the supervisor assigns it a function (steps 9-13): the function's
  code, /tmp, identity and seccomp filter, installed last.

The child makes no decisions: it applies the prepared steps in order. On any
failure it prints ``lambdalet: sandbox: <step>: <error>`` to the log pipe and
exits 121, before any user code ran.

Kernel calls go through ctypes on the C library (mount(2), umount2(2),
unshare(2), prctl(2)) or the raw syscall(2) where libc has no wrapper
(pivot_root(2), capset(2), seccomp(2)); the rest use Python's own wrappers.
"""

import base64
import ctypes
import fcntl
import os
import platform
import resource
import socket
import struct

EXIT_SANDBOX_FAILED = 121

# mount(2) flags, <linux/mount.h>.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

# prctl(2) options, <linux/prctl.h>.
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38

# capset(2): _LINUX_CAPABILITY_VERSION_3 takes two 32-bit data structs.
LINUX_CAPABILITY_VERSION_3 = 0x20080522

# seccomp(2), <linux/seccomp.h>; BPF_MAXINSNS from <linux/bpf_common.h>.
SECCOMP_SET_MODE_FILTER = 1
BPF_MAXINSNS = 4096
SOCK_FILTER_SIZE = 8  # struct sock_filter { __u16 code; __u8 jt, jf; __u32 k; }

# netdevice(7) ioctls on struct ifreq (16-byte name, then a short of flags).
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ_FLAGS = struct.Struct("16sh")

# glibc has no wrapper for these three; the numbers are per architecture
# (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h).
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capset": 126, "seccomp": 317},
    "aarch64": {"pivot_root": 41, "capset": 91, "seccomp": 277},
}
_NR = _SYSCALLS.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)

_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_mount.restype = ctypes.c_int
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int
_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
_unshare.restype = ctypes.c_int
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _check(ret):
    """Turn a C-style -1 return into OSError(errno)."""
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


# ---------------------------------------------------------------------------
# prepare: runs in the zygote, before the fork.
# ---------------------------------------------------------------------------

_PLAN_FIELDS = {
    "cgroup_procs", "unshare_flags", "new_root", "root_tmpfs_options", "root_bind",
    "ops", "after_pivot", "hostname", "cap_last_cap",
}
_SPEC_FIELDS = {"ops", "uid", "gid", "rlimits", "workdir", "seccomp_bpf"}
_OP_FIELDS = {
    "mkdir": {"op", "path", "mode"},
    "mount": {"op", "source", "target", "fstype", "flags", "data", "kind"},
    "remount": {"op", "target", "flags"},
    "write": {"op", "path", "content", "mode"},
    "symlink": {"op", "target", "path"},
    "umount": {"op", "target", "flags"},
    "rmdir": {"op", "path"},
}
_RLIM_INFINITY_JSON = 2**64 - 1  # RLIM_INFINITY as the supervisor's u64
# Above any fd the zygote can hold: closerange() up to it (one close_range(2)).
_NOFILE_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
_MAX_FD = _NOFILE_HARD if 0 < _NOFILE_HARD < 2**31 else 2**31 - 1


class Plan:
    """A checked blank plan (steps 1-8), every value in the form the
    syscalls take."""

    __slots__ = (
        "cgroup_procs", "unshare_flags", "new_root", "root_tmpfs_options", "root_bind",
        "ops", "after_pivot", "hostname", "cap_last_cap", "max_fd",
    )


class Spec:
    """A checked specialisation (steps 9-13)."""

    __slots__ = (
        "ops", "uid", "gid", "rlimits", "workdir", "seccomp_prog",
        "_seccomp_buf", "cap_last_cap", "cap_header", "cap_data",
    )


def _int(value, what, lo=0, hi=2**64 - 1):
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{what}: expected an integer in {lo}..={hi}, got {value!r}")
    return value


def _abs_path(value, what):
    if type(value) is not str or not value.startswith("/") or "\0" in value:
        raise ValueError(f"{what}: expected an absolute path, got {value!r}")
    if ".." in value.split("/"):
        raise ValueError(f"{what}: '..' is not allowed in {value!r}")
    return value


def _opt_bytes(value, what):
    if value is None:
        return None
    if type(value) is not str or "\0" in value:
        raise ValueError(f"{what}: expected a string or null, got {value!r}")
    return os.fsencode(value)


def _prepare_ops(ops, what, root):
    """Each op becomes (label, kind, args); `root` prefixes every path/target."""
    if type(ops) is not list:
        raise ValueError(f"{what}: expected a list")
    out = []
    for i, op in enumerate(ops):
        where = f"{what}[{i}]"
        if type(op) is not dict or op.get("op") not in _OP_FIELDS:
            raise ValueError(f"{where}: unknown op {op!r}")
        kind = op["op"]
        if set(op) != _OP_FIELDS[kind]:
            raise ValueError(f"{where}: {kind} takes exactly {sorted(_OP_FIELDS[kind])}, got {sorted(op)}")
        if kind == "mkdir":
            path = _abs_path(op["path"], f"{where}.path")
            out.append((f"mkdir {path}", kind, (os.fsencode(root + path), _int(op["mode"], f"{where}.mode", hi=0o7777))))
        elif kind == "mount":
            target = _abs_path(op["target"], f"{where}.target")
            if op["kind"] not in ("dir", "file"):
                raise ValueError(f"{where}.kind: expected \"dir\" or \"file\", got {op['kind']!r}")
            label = f"mount {op['source']} on {target}"
            args = (
                _opt_bytes(op["source"], f"{where}.source"),
                os.fsencode(root + target),
                _opt_bytes(op["fstype"], f"{where}.fstype"),
                _int(op["flags"], f"{where}.flags"),
                _opt_bytes(op["data"], f"{where}.data"),
                op["kind"],
            )
            out.append((label, kind, args))
        elif kind == "remount":
            target = _abs_path(op["target"], f"{where}.target")
            out.append((f"remount {target}", kind, (os.fsencode(root + target), _int(op["flags"], f"{where}.flags"))))
        elif kind == "write":
            path = _abs_path(op["path"], f"{where}.path")
            if type(op["content"]) is not str:
                raise ValueError(f"{where}.content: expected a string")
            out.append((f"write {path}", kind, (os.fsencode(root + path), op["content"].encode(), _int(op["mode"], f"{where}.mode", hi=0o7777))))
        elif kind == "symlink":
            path = _abs_path(op["path"], f"{where}.path")
            if type(op["target"]) is not str or not op["target"] or "\0" in op["target"]:
                raise ValueError(f"{where}.target: expected a non-empty string")
            out.append((f"symlink {path} -> {op['target']}", kind, (os.fsencode(op["target"]), os.fsencode(root + path))))
        elif kind == "umount":
            target = _abs_path(op["target"], f"{where}.target")
            out.append((f"umount {target}", kind, (os.fsencode(root + target), _int(op["flags"], f"{where}.flags", hi=2**31 - 1))))
        elif kind == "rmdir":
            path = _abs_path(op["path"], f"{where}.path")
            out.append((f"rmdir {path}", kind, (os.fsencode(root + path),)))
    return out


def prepare(plan):
    """Check the supervisor's blank plan and precompute everything the child
    needs for steps 1-8.

    Raises ValueError naming the offending field; the zygote reports it as
    spawn_failed without forking."""
    if _NR is None:
        raise ValueError(f"unsupported architecture {platform.machine()!r}")
    if type(plan) is not dict:
        raise ValueError("sandbox: expected an object")
    if set(plan) != _PLAN_FIELDS:
        missing, unknown = _PLAN_FIELDS - set(plan), set(plan) - _PLAN_FIELDS
        raise ValueError(f"sandbox: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
    p = Plan()
    if type(plan["cgroup_procs"]) is not list:
        raise ValueError("cgroup_procs: expected a list")
    p.cgroup_procs = [os.fsencode(_abs_path(c, "cgroup_procs[]")) for c in plan["cgroup_procs"]]
    p.unshare_flags = _int(plan["unshare_flags"], "unshare_flags", hi=2**31 - 1)
    new_root = _abs_path(plan["new_root"], "new_root").rstrip("/")
    if not new_root:
        raise ValueError("new_root: must not be /")
    p.new_root = os.fsencode(new_root)
    p.root_tmpfs_options = _opt_bytes(plan["root_tmpfs_options"], "root_tmpfs_options")
    # A container image's unpacked root instead of the tmpfs (plan/image.rs).
    p.root_bind = None if plan["root_bind"] is None else os.fsencode(_abs_path(plan["root_bind"], "root_bind"))
    p.ops = _prepare_ops(plan["ops"], "ops", new_root)
    p.after_pivot = _prepare_ops(plan["after_pivot"], "after_pivot", "")
    if type(plan["hostname"]) is not str or not 0 < len(plan["hostname"].encode()) <= 64:
        raise ValueError("hostname: expected 1 to 64 bytes")
    p.hostname = plan["hostname"]
    p.cap_last_cap = _int(plan["cap_last_cap"], "cap_last_cap", hi=63)
    p.max_fd = _MAX_FD
    return p


def prepare_specialize(spec, cap_last_cap):
    """Check a specialisation (it arrives in B, on the worker channel) and
    turn it into ready arguments. Raises ValueError naming the field."""
    if type(spec) is not dict:
        raise ValueError("sandbox: expected an object")
    if set(spec) != _SPEC_FIELDS:
        missing, unknown = _SPEC_FIELDS - set(spec), set(spec) - _SPEC_FIELDS
        raise ValueError(f"sandbox: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
    p = Spec()
    p.ops = _prepare_ops(spec["ops"], "ops", "")
    p.uid = _int(spec["uid"], "uid", lo=1, hi=2**32 - 2)
    p.gid = _int(spec["gid"], "gid", lo=1, hi=2**32 - 2)
    if type(spec["rlimits"]) is not list:
        raise ValueError("rlimits: expected a list")
    p.rlimits = []
    for i, limit in enumerate(spec["rlimits"]):
        if type(limit) is not list or len(limit) != 3:
            raise ValueError(f"rlimits[{i}]: expected [resource, soft, hard]")
        res, soft, hard = (_int(v, f"rlimits[{i}]") for v in limit)
        p.rlimits.append((res, *(resource.RLIM_INFINITY if v == _RLIM_INFINITY_JSON else v for v in (soft, hard))))
    p.workdir = os.fsencode(_abs_path(spec["workdir"], "workdir"))
    if type(spec["seccomp_bpf"]) is not str:
        raise ValueError("seccomp_bpf: expected base64")
    bpf = base64.b64decode(spec["seccomp_bpf"], validate=True)
    count, rest = divmod(len(bpf), SOCK_FILTER_SIZE)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise ValueError(f"seccomp_bpf: {len(bpf)} bytes is not 1..={BPF_MAXINSNS} struct sock_filter")
    # Keep a reference so the buffer outlives the pointer in the fprog.
    p._seccomp_buf = ctypes.create_string_buffer(bpf, len(bpf))
    p.seccomp_prog = _SockFprog(count, ctypes.addressof(p._seccomp_buf))
    p.cap_last_cap = cap_last_cap
    p.cap_header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    p.cap_data = (_CapData * 2)()  # all zero: no effective, permitted or inheritable caps
    return p


# ---------------------------------------------------------------------------
# apply: runs in the child. No parsing, no decisions.
# ---------------------------------------------------------------------------


def _describe(err):
    """str(err), with a bytes file name shown as a path rather than b'...'."""
    if isinstance(err, OSError) and err.errno:
        text = f"[Errno {err.errno}] {err.strerror}"
        if err.filename is not None:
            text += f": {os.fsdecode(err.filename)}"
        return text
    return f"{type(err).__name__}: {err}"


def _fail(fd, step, err):
    """Report a failed step on `fd` and exit 121; never returns."""
    try:
        os.write(fd, f"lambdalet: sandbox: {step}: {_describe(err)}\n".encode(errors="replace"))
    finally:
        os._exit(EXIT_SANDBOX_FAILED)


def _write_all(path, data, flags, mode=0o644):
    fd = os.open(path, flags | os.O_WRONLY | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if flags & os.O_CREAT:
            os.fchmod(fd, mode)  # the mode asked for, whatever the umask
    finally:
        os.close(fd)


def _mkdir_p(path, mode):
    """mkdir -p: missing parents get 0755, the last component `mode` (not umasked)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        _mkdir_p(parent, 0o755)
    os.mkdir(path, mode)
    os.chmod(path, mode)


class _StepError(Exception):
    """An op failed: its label (the step) and the OSError."""

    def __init__(self, step, err):
        super().__init__(step, err)
        self.step, self.err = step, err


def _run_ops(ops):
    """Run prepared ops in order; raises _StepError on the first failure."""
    for label, kind, args in ops:
        try:
            if kind == "mkdir":
                _mkdir_p(*args)
            elif kind == "mount":
                source, target, fstype, flags, data, point = args
                # The mount point may exist already (a path in a mounted
                # proc, say); only a missing one is created.
                if not os.path.lexists(target):
                    if point == "dir":
                        _mkdir_p(target, 0o755)
                    else:
                        _mkdir_p(os.path.dirname(target), 0o755)
                        _write_all(target, b"", os.O_CREAT | os.O_EXCL)
                _check(_mount(source, target, fstype, flags, data))
            elif kind == "remount":
                target, flags = args
                _check(_mount(None, target, None, flags, None))
            elif kind == "write":
                path, content, mode = args
                _write_all(path, content, os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
            elif kind == "symlink":
                os.symlink(*args)
            elif kind == "umount":
                _check(_umount2(*args))
            elif kind == "rmdir":
                os.rmdir(*args)
        except OSError as err:
            raise _StepError(label, err) from None


def enter_a(plan, log_fd):
    """Step 1, in A (the zygote's child). Returns only in B; A exits here.

    A failure is written to the log pipe (fd 2 is still the supervisor's
    stderr here) and A exits 121; no B exists then."""
    step = "setsid"
    try:
        # A leaves the supervisor's session and process group, so a signal
        # to that group (Ctrl-C on a terminal) never reaches an environment.
        os.setsid()
        # Join the environment's cgroups first: everything allocated from
        # here on (namespaces, B, the user's memory) is charged to them, and
        # the cgroup namespace below takes this cgroup as its root.
        for path in plan.cgroup_procs:
            step = f"join cgroup {os.fsdecode(path)}"
            _write_all(path, b"0", 0)
        step = "unshare"
        _check(_unshare(plan.unshare_flags))
        # A new PID namespace applies to children only: B is its PID 1.
        step = "fork"
        pid = os.fork()
    except OSError as err:
        _fail(log_fd, step, err)
    if pid != 0:
        # A exits at once: B is reparented to the supervisor (a child
        # subreaper; the zygote is not one), which watches it by pidfd.
        os._exit(0)
    return None


def enter_blank(plan, worker_fd, log_fd):
    """Steps 2-8, in B: a blank environment, namespaced and pivoted into its
    root, still root, with every function's code bound read-only at a private
    path until B is specialised. Returns the worker socket's fd; exits 121 on
    failure."""
    err_fd = log_fd
    step = "stdio"
    try:
        # 2. stdio. The two passed fds are moved above 2 first so that the
        # dup2s below cannot overwrite them.
        if worker_fd <= 2:
            worker_fd = fcntl.fcntl(worker_fd, fcntl.F_DUPFD_CLOEXEC, 3)
        if log_fd <= 2:
            log_fd = err_fd = fcntl.fcntl(log_fd, fcntl.F_DUPFD_CLOEXEC, 3)
        null_fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.dup2(null_fd, 0)
        err_fd = 2
        step = "close fds"
        # Nothing of the zygote survives: only 0-2 and the worker socket.
        os.closerange(3, worker_fd)
        os.closerange(worker_fd + 1, plan.max_fd)
        # The worker socket must not leak into processes the user execs.
        os.set_inheritable(worker_fd, False)

        # 3. Stop mount events propagating to the host; also required by
        # pivot_root(2) (the old root must not be a shared mount).
        step = "make / rprivate"
        _check(_mount(None, b"/", None, MS_REC | MS_PRIVATE, None))

        # 4. The new root is a fresh tmpfs, so that pivot_root(2) gets a
        # mount point and nothing of the host directory shows through; for a
        # container image, its unpacked root, bound and made read-only at once
        # (a bind ignores MS_RDONLY on creation), before any op mounts on it.
        if plan.root_bind is None:
            step = "mount root tmpfs"
            _check(_mount(b"tmpfs", plan.new_root, b"tmpfs", 0, plan.root_tmpfs_options))
        else:
            step = "bind image root"
            _check(_mount(plan.root_bind, plan.new_root, None, MS_BIND, None))
            _check(_mount(None, plan.new_root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None))

        # 5. Build the tree while the host is still visible: bind-mount
        # sources are host paths.
        _run_ops(plan.ops)

        # 6. Swap roots and detach the old one: after this no host path is
        # reachable but what the ops bound (the functions' code, until the
        # specialisation). pivot_root(".", ".") stacks the old root on the
        # new one; umount2(MNT_DETACH) of "." then removes it (pivot_root(2),
        # NOTES).
        step = "chdir new root"
        os.chdir(plan.new_root)
        step = "pivot_root"
        _check(_syscall(ctypes.c_long(_NR["pivot_root"]), ctypes.c_char_p(b"."), ctypes.c_char_p(b".")))
        step = "detach old root"
        _check(_umount2(b".", MNT_DETACH))
        step = "chdir /"
        os.chdir(b"/")

        # 7. What can only be done inside the new root: /proc of this PID
        # namespace, its masks.
        _run_ops(plan.after_pivot)

        # 8. UTS and network namespace setup needs CAP_SYS_ADMIN and
        # CAP_NET_ADMIN: before the capabilities go.
        step = "sethostname"
        socket.sethostname(plan.hostname)
        step = "bring lo up"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            ifreq = fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ_FLAGS.pack(b"lo", 0))
            flags = IFREQ_FLAGS.unpack(ifreq)[1]
            if not flags & IFF_UP:  # already up with the host network: leave it alone
                fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ_FLAGS.pack(b"lo", flags | IFF_UP))
    except _StepError as err:
        _fail(err_fd, err.step, err.err)
    except Exception as err:  # an OSError, or a bug: either way no user code runs
        _fail(err_fd, step, err)
    return worker_fd


def specialize(spec, before_drop=None):
    """Steps 9-13, in B, when a function is assigned to the blank: its code,
    its /tmp, its identity, its filter. Exits 121 on failure, before any user
    code ran. `before_drop` (a node blank's hand-over to its node) runs
    after step 10, while B is still root."""
    step = "specialize"
    try:
        # 9. The function's tree: bind its code, detach every other
        # function's, /etc/passwd, /tmp, and the root made read-only last,
        # since the steps before write it.
        _run_ops(spec.ops)

        # 10. Raising a hard limit needs CAP_SYS_RESOURCE: before the drop.
        for res, soft, hard in spec.rlimits:
            step = f"setrlimit {res}"
            resource.setrlimit(res, (soft, hard))
        if before_drop is not None:
            step = "hand over to node"
            before_drop()

        # 11. Capabilities and identity. The bounding set needs
        # CAP_SETPCAP, and setgroups/setresgid need CAP_SETGID: all before
        # setresuid, which clears the permitted and effective sets. capset
        # then clears the inheritable set, and with it the ambient set
        # (capabilities(7)). no_new_privs keeps execve from regaining any,
        # and lets an unprivileged process install a seccomp filter.
        step = "drop bounding set"
        for cap in range(spec.cap_last_cap + 1):
            _check(_prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))
        step = "setgroups"
        os.setgroups([])
        step = "setresgid"
        os.setresgid(spec.gid, spec.gid, spec.gid)
        step = "setresuid"
        os.setresuid(spec.uid, spec.uid, spec.uid)
        step = "capset"
        _check(_syscall(ctypes.c_long(_NR["capset"]), ctypes.byref(spec.cap_header), ctypes.byref(spec.cap_data)))
        step = "no_new_privs"
        _check(_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))

        # 12.
        step = "chdir workdir"
        os.chdir(spec.workdir)

        # 13. Last, so every step above may use syscalls the filter refuses.
        step = "seccomp"
        _check(_syscall(
            ctypes.c_long(_NR["seccomp"]),
            ctypes.c_long(SECCOMP_SET_MODE_FILTER),
            ctypes.c_long(0),
            ctypes.byref(spec.seccomp_prog),
        ))
    except _StepError as err:
        _fail(2, err.step, err.err)
    except Exception as err:  # an OSError, or a bug: either way no user code runs
        _fail(2, step, err)

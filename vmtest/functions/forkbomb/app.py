"""A fork bomb: a shell forks children until the kernel refuses (pids.max);
then, for `hold` seconds, every further fork() must be refused too.

The bomb is the static busybox shipped next to this file by vmtest/guest.sh:
`sh -c 'while :; do (read x <&3) & done'`, each child a forked shell that
blocks reading a pipe (fd 3) that this process never writes to. A forked 1 MB busybox costs a fraction of
a fork of this interpreter (~150 ms under qemu's software emulation: page
tables and copy-on-write of its heap), and ash stops at the first fork that
fails, printing why. The children stay: the environment remains at its limit
after the invoke, and deleting the function must kill them.
"""
import errno
import os
import time

TASK = os.environ.get("LAMBDA_TASK_ROOT", "/var/task")
BUSYBOX = os.path.join(TASK, "busybox")
_hold_r = _hold_w = None


def processes():
    """Processes of this environment (its own PID namespace and /proc)."""
    return sum(1 for d in os.listdir("/proc") if d.isdigit())


def handler(event, context):
    # Kept open (a module global) so that the children stay blocked after the invoke.
    global _hold_r, _hold_w
    _hold_r, _hold_w = os.pipe()
    r, w = os.pipe()
    start = time.monotonic()
    bomb = os.posix_spawn(
        BUSYBOX,
        ["sh", "-c", "while :; do (read x <&3) & done"],
        {},
        file_actions=[(os.POSIX_SPAWN_DUP2, _hold_r, 3), (os.POSIX_SPAWN_DUP2, w, 2)],
    )
    os.close(w)
    os.close(_hold_r)
    _, status = os.waitpid(bomb, 0)
    bomb_seconds = time.monotonic() - start
    # The children hold the pipe's write end too: read what is there, no EOF.
    os.set_blocking(r, False)
    try:
        bomb_error = os.read(r, 4096).decode(errors="replace").strip()[-200:]
    except BlockingIOError:
        bomb_error = ""
    os.close(r)
    # The shell's exit freed one slot: take it back.
    topped_up = 0
    while True:
        try:
            os.posix_spawn(BUSYBOX, ["sleep", "600"], {})
            topped_up += 1
        except OSError:
            break
    refused = accepted = 0
    fork_errors = set()
    end = time.monotonic() + float(event.get("hold", 1))
    while time.monotonic() < end:
        try:
            pid = os.fork()
        except OSError as e:
            refused += 1
            fork_errors.add(errno.errorcode.get(e.errno, str(e.errno)))
            time.sleep(0.05)
            continue
        if pid == 0:
            os._exit(0)
        accepted += 1
        os.waitpid(pid, 0)
    return {
        "processes": processes(),
        "bomb_seconds": round(bomb_seconds, 2),
        "bomb_exit": os.waitstatus_to_exitcode(status),
        "bomb_error": bomb_error,
        "topped_up": topped_up,
        "fork_refused": refused,
        "fork_errors": ",".join(sorted(fork_errors)),
        "fork_accepted": accepted,
        "uid": os.getuid(),
    }

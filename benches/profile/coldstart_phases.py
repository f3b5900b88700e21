"""Where a cold start's time goes, phase by phase, from a perf recording.

Record the supervisor and its zygote (their children are followed) while
profile/drive.py makes cold starts, then feed `perf script` to this script:

    perf record -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit \
        -e sched:sched_switch -e sched:sched_process_fork [-e exceptions:page_fault_user] \
        -p SUPERVISOR_PID,ZYGOTE_PID -o cold.perf -- python3 drive.py SOCK cold hello 30
    perf script -i cold.perf -F comm,pid,time,event,trace | python3 coldstart_phases.py SUPERVISOR_PID ZYGOTE_PID

Phases are cut at syscalls (x86_64 numbers): the supervisor reading the
Invoke, its sendmsg of the spawn request, the zygote's recvmsg and fork, A's
cgroup.procs writes, unshare and fork, B's pivot_root and seccomp, B's first
send (ready), the invoke's result and the supervisor's reply. Off-CPU time is
from sched_switch: "blocked" is a switch-out in state S or D (waiting in the
kernel), "preempted" one in state R (another task ran). Recording every
syscall costs ~1-2 us each, and every page fault when they are recorded: the
phases are a little longer than without perf.
"""

import bisect
import re
import statistics
import sys

NR = dict(read=0, write=1, sendto=44, recvfrom=45, sendmsg=46, recvmsg=47, clone=56, mkdir=83,
          setsid=112, pivot_root=155, unshare=272, openat=257, seccomp=317)
LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)$")


def parse(stream):
    events, parent, switches, faults = [], {}, [], []
    for line in stream:
        m = LINE.match(line)
        if not m:
            continue
        _, pid, t, event, rest = m.groups()
        pid, t = int(pid), float(t) * 1000  # ms
        if event == "raw_syscalls:sys_enter":
            events.append((t, pid, "enter", int(rest.split()[1]), None))
        elif event == "raw_syscalls:sys_exit":
            mm = re.match(r"NR (-?\d+) = (-?\d+)", rest)
            events.append((t, pid, "exit", int(mm.group(1)), int(mm.group(2))))
        elif event == "sched:sched_switch":
            mm = re.search(r"prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==>", rest)
            switches.append((t, int(mm.group(1)), mm.group(2)))
        elif event.startswith("exceptions:page_fault"):
            faults.append((t, pid))
        elif event == "sched:sched_process_fork":
            mm = re.search(r"pid=(\d+).*child_pid=(\d+)", rest)
            parent[int(mm.group(2))] = int(mm.group(1))
            events.append((t, int(mm.group(1)), "fork", None, int(mm.group(2))))
    events.sort(key=lambda e: e[0])
    return events, parent, sorted(switches), faults


def main():
    sup, zyg = int(sys.argv[1]), int(sys.argv[2])
    events, parent, switches, faults = parse(sys.stdin)
    by_pid = {}
    for e in events:
        by_pid.setdefault(e[1], []).append(e)
    # A task is off-CPU from its switch-out to its next event of any kind.
    seen = {}
    for t, p in [(e[0], e[1]) for e in events] + faults + [(s[0], s[1]) for s in switches]:
        seen.setdefault(p, []).append(t)
    for v in seen.values():
        v.sort()
    offs = {}
    for t, p, state in switches:
        v = seen[p]
        i = bisect.bisect_right(v, t)
        offs.setdefault(p, []).append((t, v[i] if i < len(v) else t, state))

    def off(pid, t1, t2, states):
        return sum(max(0.0, min(b, t2) - max(a, t1)) for a, b, st in offs.get(pid, []) if st[0] in states)

    def nfaults(pid, t1, t2):
        return sum(1 for t, p in faults if p == pid and t1 <= t <= t2)

    def first(pid, kind, nr=None, after=0.0, cond=lambda e: True):
        return next((e[0] for e in by_pid.get(pid, []) if e[0] >= after and e[2] == kind
                     and (nr is None or e[3] == nr) and cond(e)), None)

    def last(pid, kind, nr, before, cond=lambda e: True):
        found = None
        for e in by_pid.get(pid, []):
            if e[0] > before:
                break
            if e[2] == kind and e[3] == nr and cond(e):
                found = e[0]
        return found

    rows = []
    for a in [c for c, p in parent.items() if p == zyg]:
        bs = [c for c, p in parent.items() if p == a]
        if not bs:
            continue
        b = bs[0]
        try:
            fork_a = first(zyg, "fork", cond=lambda e: e[4] == a)
            z_clone = last(zyg, "enter", NR["clone"], fork_a)
            z_clone_done = first(zyg, "exit", NR["clone"], fork_a)
            z_recv = last(zyg, "exit", NR["recvmsg"], fork_a)
            s_sent = last(sup, "exit", NR["sendmsg"], z_recv)
            mkdirs = [e[0] for e in by_pid[sup] if e[2] == "enter" and e[3] == NR["mkdir"] and s_sent - 20 < e[0] < s_sent]
            s_req = last(sup, "exit", NR["recvfrom"], mkdirs[0], lambda e: e[4] > 0)
            a0 = by_pid[a][0][0]
            a_setsid = first(a, "exit", NR["setsid"])
            a_cg = first(a, "enter", NR["openat"], a_setsid)
            a_unshare, a_unshare_done = first(a, "enter", NR["unshare"]), first(a, "exit", NR["unshare"])
            a_cg_done = last(a, "exit", NR["write"], a_unshare)
            a_clone, a_clone_done = first(a, "enter", NR["clone"], a_unshare_done), first(a, "exit", NR["clone"], a_unshare_done)
            b0 = by_pid[b][0][0]
            b_pivot = first(b, "enter", NR["pivot_root"])
            b_seccomp = first(b, "exit", NR["seccomp"])
            # A blank (`--prewarm`) says so after its generic root is up and
            # waits for the specialise line: split at that round trip.
            b_blank = first(b, "enter", NR["write"], b_pivot)
            b_spec = b_blank and first(b, "exit", NR["read"], b_blank, lambda e: e[4] > 0)
            if not (b_spec and b_spec < b_seccomp):
                b_blank = b_spec = None
            b_ready = first(b, "enter", NR["sendto"])
            s_ready = first(sup, "exit", None, b_ready, lambda e: e[3] in (0, 45, 47) and e[4] > 0)
            b_invoked = first(b, "exit", NR["recvfrom"], b_ready, lambda e: e[4] > 0)
            b_result = first(b, "enter", NR["sendto"], b_invoked)
            s_reply = first(sup, "exit", NR["sendto"], b_result)
        except (TypeError, IndexError, KeyError, StopIteration):
            continue
        if None in (s_req, s_sent, z_recv, z_clone, z_clone_done, a_cg, a_cg_done, a_unshare_done,
                    a_clone_done, b_pivot, b_seccomp, b_ready, s_ready, b_result, s_reply):
            continue
        # Consecutive phases: they add up to the total. "of which" rows are
        # parts of the phase above them.
        rows.append([
            ("supervisor: Invoke read → spawn request sent (cgroup mkdirs + limits, plan)", s_sent - s_req, None),
            ("zygote: wakes up, receives the request", z_recv - s_sent, None),
            ("zygote: decodes and checks the request (Python)", z_clone - z_recv, (zyg, z_recv, z_clone)),
            ("A: fork() of the zygote, A's first steps (setsid) → cgroup join starts", a_cg - z_clone, (a, a0, a_cg)),
            ("    of which the fork() syscall in the zygote", z_clone_done - z_clone, None),
            ("    of which fork() entered → A's first syscall", a0 - z_clone, None),
            ("    of which A's first syscall → setsid() (Python after fork)", a_setsid - a0, (a, a0, a_setsid)),
            ("A: join the environment's 3 cgroups (write cgroup.procs ×3)", a_cg_done - a_cg, (a, a_cg, a_cg_done)),
            ("A: unshare(mnt, uts, ipc, net, cgroup, pid)", a_unshare_done - a_cg_done, None),
            ("B: fork() of A → B's first syscall", b0 - a_unshare_done, None),
            ("    of which the fork() syscall in A", a_clone_done - a_clone, None),
            ("B: stdio, root tmpfs, mount ops → pivot_root", b_pivot - b0, (b, b0, b_pivot)),
            *([("B: pivot_root → seccomp installed (hostname, lo, rlimits, caps, uid)", b_seccomp - b_pivot, (b, b_pivot, b_seccomp))]
              if b_blank is None else [
                ("B: pivot_root → blank line sent (generic root, hostname, lo)", b_blank - b_pivot, (b, b_pivot, b_blank)),
                ("B: blank line sent → specialise line read (via the supervisor)", b_spec - b_blank, None),
                ("B: specialise: decode, code and /tmp mounts, rlimits, caps, uid → seccomp", b_seccomp - b_spec, (b, b_spec, b_seccomp)),
            ]),
            ("B: init (bootstrap.main, import app) → ready sent", b_ready - b_seccomp, (b, b_seccomp, b_ready)),
            ("supervisor: receives ready", s_ready - b_ready, None),
            ("invoke: supervisor sends it, B runs the handler, result sent", b_result - s_ready, None),
            ("supervisor: result → reply written", s_reply - b_result, None),
            ("TOTAL: Invoke read → reply written", s_reply - s_req, None),
        ])
    print(f"{len(rows)} cold starts; p50 (min–max) in ms; for a process's own phases: "
          "time blocked in the kernel / preempted / page faults")
    for i, (name, _, who) in enumerate(rows[0] if rows else []):
        v = sorted(r[i][1] for r in rows)
        extra = ""
        if who is not None:
            blocked = statistics.median(off(r[i][2][0], r[i][2][1], r[i][2][2], "SD") for r in rows)
            preempt = statistics.median(off(r[i][2][0], r[i][2][1], r[i][2][2], "R") for r in rows)
            nf = statistics.median(nfaults(*r[i][2]) for r in rows)
            extra = f"   blocked {blocked:6.3f}  preempted {preempt:6.3f}  faults {nf:5.0f}"
        print(f"{name:76s} {statistics.median(v):7.3f} ({v[0]:.3f}–{v[-1]:.3f}){extra}")


if __name__ == "__main__":
    main()

"""Where a cold start served from the blank pool goes, phase by phase.

With `--prewarm N` (the default) a cold start takes a blank environment made
ahead of time and specialises it. Record the supervisor and its zygote (blanks
made during the recording are followed: run more cold starts than the pool
holds) while profile/drive.py makes cold starts, then:

    perf record -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit \
        -e sched:sched_switch -e sched:sched_process_fork [-e exceptions:page_fault_user] \
        -p SUPERVISOR_PID,ZYGOTE_PID -o pooled.perf -- python3 drive.py SOCK cold hello 30
    perf script -i pooled.perf -F comm,pid,time,event,trace | python3 pooled_phases.py SUPERVISOR_PID ZYGOTE_PID

Each cold start is found from its blank B's first read (the specialise line).
"Others on CPU" is the time the zygote and its other children (blanks being
made to refill the pool) spent in syscalls or between their events during the
cold start: work competing with it for the two CPUs.
"""

import bisect
import re
import statistics
import sys

from coldstart_phases import parse  # same perf script format

SENDS = (1, 44, 46)
READS = (0, 45, 47)
NR_MOUNT, NR_SECCOMP = 165, 317


def main():
    sup, zyg = int(sys.argv[1]), int(sys.argv[2])
    events, parent, switches, faults = parse(sys.stdin)
    by_pid = {}
    for e in events:
        by_pid.setdefault(e[1], []).append(e)
    blanks = {c for c, p in parent.items() if parent.get(p) == zyg}
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

    def first(pid, kind, nrs, after, positive=False):
        return next((e[0] for e in by_pid.get(pid, []) if e[0] >= after and e[2] == kind and e[3] in nrs
                     and (not positive or (e[4] or 0) > 0)), None)

    def last(pid, kind, nrs, before, positive=False):
        found = None
        for e in by_pid.get(pid, []):
            if e[0] > before:
                break
            if e[2] == kind and e[3] in nrs and (not positive or (e[4] or 0) > 0):
                found = e[0]
        return found

    rows = []
    for b in blanks:
        evs = by_pid.get(b, [])
        if not evs:
            continue
        # The blank's own "blank" line first, then the specialise line read.
        blank_sent = first(b, "enter", SENDS, 0.0)
        b_read = blank_sent and first(b, "exit", READS, blank_sent, positive=True)
        if b_read is None:
            continue
        s_spec = last(sup, "enter", SENDS, b_read)
        s_req = s_spec and last(sup, "exit", READS, s_spec, positive=True)
        b_mount = first(b, "enter", (NR_MOUNT,), b_read)
        b_seccomp = first(b, "exit", (NR_SECCOMP,), b_read)
        b_ready = b_seccomp and first(b, "enter", SENDS, b_seccomp)
        s_ready = b_ready and first(sup, "exit", READS, b_ready, positive=True)
        b_inv = s_ready and first(b, "exit", READS, s_ready, positive=True)
        b_result = b_inv and first(b, "enter", SENDS, b_inv)
        s_reply = b_result and first(sup, "exit", SENDS, b_result)
        if None in (s_req, b_mount, s_reply) or not (s_req < s_spec < b_read < b_mount < b_seccomp):
            continue
        others = [p for p in by_pid if p not in (sup, b) and (p == zyg or parent.get(p) == zyg or parent.get(parent.get(p)) == zyg)]
        other_cpu = 0.0
        for p in others:
            ts = [e[0] for e in by_pid[p] if s_req <= e[0] <= s_reply]
            if ts:
                other_cpu += (max(ts) - min(ts)) - off(p, min(ts), max(ts), "SDR")
        forks = sum(1 for e in by_pid.get(zyg, []) if e[2] == "fork" and s_req <= e[0] <= s_reply)
        rows.append([
            ("supervisor: Invoke read → specialise line sent (cgroup limits, plan)", s_spec - s_req, None),
            ("blank B: wakes up, reads the line", b_read - s_spec, None),
            ("B: decode + check the specialisation, bootstrap.prepare (Python)", b_mount - b_read, (b, b_read, b_mount)),
            ("B: mount ops, rlimits, capabilities, uid → seccomp installed", b_seccomp - b_mount, (b, b_mount, b_seccomp)),
            ("B: init (bootstrap.main, import app) → ready sent", b_ready - b_seccomp, (b, b_seccomp, b_ready)),
            ("supervisor: receives ready", s_ready - b_ready, None),
            ("invoke: sent, handler run, result sent", b_result - s_ready, (b, s_ready, b_result)),
            ("supervisor: result → reply written", s_reply - b_result, None),
            ("TOTAL: Invoke read → reply written", s_reply - s_req, (b, s_req, s_reply)),
            ("zygote and new blanks on CPU meanwhile (refill)", other_cpu, None),
            ("zygote forks meanwhile", forks, None),
        ])
    print(f"{len(rows)} pooled cold starts; p50 (min–max) in ms; for B's own phases: "
          "time blocked in the kernel / preempted / page faults")
    for i, (name, _, who) in enumerate(rows[0] if rows else []):
        v = sorted(r[i][1] for r in rows)
        extra = ""
        if who is not None:
            blocked = statistics.median(off(r[i][2][0], r[i][2][1], r[i][2][2], "SD") for r in rows)
            preempt = statistics.median(off(r[i][2][0], r[i][2][1], r[i][2][2], "R") for r in rows)
            nf = statistics.median(nfaults(*r[i][2]) for r in rows)
            extra = f"   blocked {blocked:6.3f}  preempted {preempt:6.3f}  faults {nf:5.0f}"
        print(f"{name:72s} {statistics.median(v):7.3f} ({v[0]:.3f}–{v[-1]:.3f}){extra}")


if __name__ == "__main__":
    main()

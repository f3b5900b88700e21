"""Where a warm round trip's time goes, hop by hop, from a perf recording.

Record every CPU (wake-ups cross processes) while profile/drive.py does
sequential warm invokes, then feed `perf script` to this script:

    perf record -a -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit -o warm.perf -- \
        python3 drive.py SOCK warm echo 2000
    perf script -i warm.perf -F comm,pid,cpu,time,event,trace | \
        python3 warm_hops.py SUPERVISOR_PID ENVIRONMENT_PID CLIENT_PID

(the client's pid: the process with as many sendto calls as invokes, e.g.
`perf script -F comm,pid,event,trace | grep 'NR 44 ' | sort | uniq -c`).
A hop ("→") runs from the sender's send to the receiver's read returning: the
wake-up and, when both are on one CPU, the wait for the sender to block. The
other rows are a process's own work between its read and its send. Recording
every syscall of the machine adds ~1 us per syscall.
"""

import bisect
import collections
import re
import statistics
import sys

SENDS = (1, 44, 46)  # write, sendto, sendmsg
READS = (0, 45, 47)  # read, recvfrom, recvmsg
LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")


def main():
    sup, env, client = map(int, sys.argv[1:4])
    events = []
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        _, pid, cpu, t, event, rest = m.groups()
        pid = int(pid)
        if pid not in (sup, env, client):
            continue
        t = float(t) * 1e6  # us
        if event == "raw_syscalls:sys_enter":
            events.append((t, pid, "enter", int(rest.split()[1]), 0, int(cpu)))
        elif event == "raw_syscalls:sys_exit":
            mm = re.match(r"NR (-?\d+) = (-?\d+)", rest)
            events.append((t, pid, "exit", int(mm.group(1)), int(mm.group(2)), int(cpu)))
    events.sort()
    times = [e[0] for e in events]

    def next_event(after, pid, kind, nrs):
        i = bisect.bisect_left(times, after)
        while i < len(events):
            e = events[i]
            if e[1] == pid and e[2] == kind and e[3] in nrs and (kind == "enter" or e[4] > 0):
                return e
            i += 1
        return None

    rows, cpus = [], collections.Counter()
    t = 0.0
    while True:
        c_send = next_event(t, client, "enter", SENDS)
        s_read = c_send and next_event(c_send[0], sup, "exit", READS)
        s_send = s_read and next_event(s_read[0], sup, "enter", SENDS)
        e_read = s_send and next_event(s_send[0], env, "exit", READS)
        e_send = e_read and next_event(e_read[0], env, "enter", SENDS)
        s_read2 = e_send and next_event(e_send[0], sup, "exit", READS)
        s_send2 = s_read2 and next_event(s_read2[0], sup, "enter", SENDS)
        c_read = s_send2 and next_event(s_send2[0], client, "exit", READS)
        if not c_read:
            break
        rows.append({
            "client → supervisor": s_read[0] - c_send[0],
            "supervisor: request read → invoke sent to the environment": s_send[0] - s_read[0],
            "supervisor → environment": e_read[0] - s_send[0],
            "environment: invoke read → result sent (runtime + handler)": e_send[0] - e_read[0],
            "environment → supervisor": s_read2[0] - e_send[0],
            "supervisor: result read → reply sent": s_send2[0] - s_read2[0],
            "supervisor → client": c_read[0] - s_send2[0],
            "TOTAL round trip": c_read[0] - c_send[0],
        })
        cpus[f"client cpu{c_send[5]} supervisor cpu{s_read[5]} environment cpu{e_read[5]}"] += 1
        t = c_read[0]
    print(f"{len(rows)} round trips; us: p50 (p10–p90)")
    for k in rows[0] if rows else []:
        v = sorted(r[k] for r in rows)
        print(f"{k:62s} {statistics.median(v):7.1f} ({v[len(v) // 10]:.1f}–{v[len(v) * 9 // 10]:.1f})")
    print("where they ran:", ", ".join(f"{k}: {n}" for k, n in cpus.most_common(4)))


if __name__ == "__main__":
    main()

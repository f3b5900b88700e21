"""Cold start and sandbox sanity: who and where the handler runs."""
import os
import socket


def handler(event, context):
    with open("/proc/self/cgroup") as f:
        cgroup = f.read().strip()
    return {
        "greeting": "hello " + event.get("name", "world"),
        "uid": os.getuid(),
        # In its own cgroup namespace the environment's cgroup is its root.
        "cgroup": cgroup,
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "memory_limit_in_mb": int(context.memory_limit_in_mb),
        "has_sys": os.path.exists("/sys/fs/cgroup"),
    }

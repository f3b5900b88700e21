"""Says which environment served the invoke: the burst, density and load
benchmarks' function (benches/burst.rs, density.rs, load.rs).

ENV is drawn once per environment, in the init phase, so the distinct values
among many answers count the environments that served them (os.getpid() would
not: every environment is PID 1 of its own PID namespace).

The event may ask for a little CPU work ("work": n sums n squares) or for the
invoke to last until a wall-clock time ("until": UNIX seconds; the host's clock,
which environments share), which keeps many environments busy at once.
"""

import os
import time

ENV = os.urandom(8).hex()


def handler(event, context):
    started = time.time()
    until = event.get("until") if isinstance(event, dict) else None
    if until and until > started:
        time.sleep(until - started)
    work = event.get("work", 0) if isinstance(event, dict) else 0
    total = sum(i * i for i in range(work))
    n = event.get("n") if isinstance(event, dict) else None
    return {"env": ENV, "n": n, "work": total, "started": started}

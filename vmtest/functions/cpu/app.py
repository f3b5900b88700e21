"""Spins for `seconds` of wall time and reports its share of one CPU."""
import os
import time


def handler(event, context):
    seconds = float(event.get("seconds", 2))
    wall0, cpu0 = time.monotonic(), time.process_time()
    loops = 0
    while time.monotonic() - wall0 < seconds:
        loops += 1
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    return {
        "cpu": round(cpu, 4),
        "wall": round(wall, 4),
        "share": round(cpu / wall, 4),
        "loops": loops,
        "uid": os.getuid(),
    }

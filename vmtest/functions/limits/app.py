"""Sleeps, so that the VM's /init can read the environment's cgroup files
while an invoke runs."""
import os
import time


def handler(event, context):
    time.sleep(float(event.get("sleep", 3)))
    return {"slept": True, "uid": os.getuid()}

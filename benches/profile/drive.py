"""Drives a running `lambdalet serve` for profiling (docs/benchmarks.md § Profiling).

    python3 drive.py SOCKET cold FUNCTION N     # N cold starts: retire, then invoke
    python3 drive.py SOCKET warm FUNCTION N     # N sequential warm invokes

The function must exist. Prints the client-observed latency of each cold start
with its Init Duration, or the warm round trip's p50/p99.
"""

import json
import socket
import sys
import time


def main():
    path, mode, function, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    f = sock.makefile("rwb")
    ids = iter(range(1, 1 << 62))

    def call(op, params):
        f.write(json.dumps({"id": next(ids), "op": op, "params": params}).encode() + b"\n")
        f.flush()
        start = time.perf_counter()
        answer = json.loads(f.readline())
        if "error" in answer:
            raise SystemExit(f"{op}: {answer['error']}")
        return answer["result"], time.perf_counter() - start

    if mode == "cold":
        for k in range(n):
            call("UpdateFunctionConfiguration", {"FunctionName": function, "Description": f"profile {k} {time.time()}"})
            time.sleep(0.03)
            result, took = call("Invoke", {"FunctionName": function, "Payload": {}})
            logs, _ = call("GetLogs", {"FunctionName": function, "Limit": 8})
            report = [line for line in logs["Lines"] if line.startswith("REPORT") and result["RequestId"] in line]
            init = [x for x in report[0].split("\t") if x.startswith("Init Duration")] if report else []
            print(f"{took * 1000:.2f} ms  {init[0] if init else 'warm?'}", flush=True)
    else:
        line = json.dumps({"id": 1, "op": "Invoke", "params": {"FunctionName": function, "Payload": {"hello": "world", "n": 42}}}).encode() + b"\n"
        lat = []
        for _ in range(n):
            start = time.perf_counter()
            sock.sendall(line)
            f.readline()
            lat.append(time.perf_counter() - start)
        lat.sort()
        print(f"p50 {lat[len(lat) // 2] * 1e6:.0f} us  p99 {lat[int(len(lat) * 0.99)] * 1e6:.0f} us")


if __name__ == "__main__":
    main()

"""A bounded load test of ``mmrecsys serve`` on 127.0.0.1: latency percentiles and server errors.

    python benchmarks/bench_serve_load.py [--requests 2000] [--clients 8] [--users 1000 --items 500]

Trains a small LightGCN run (synthetic data, 2 epochs), starts ``python -m mmrecsys.cli serve``
on a free loopback port, and sends ``--requests`` requests from ``--clients`` concurrent
clients (threads, one keep-alive connection each), a fixed mix of valid and invalid requests:

    55% GET /recommend (valid user, k 1..50)      15% POST /recommend (1–8 valid users)
    5%  GET /similar-items (valid item)          10% GET /recommend unknown user (→ 404)
    5%  GET /recommend k=0 (→ 422)               5% POST with a malformed body (→ 422)
    5%  GET /recommend k larger than the catalogue (→ 200, at most the unseen items)

Prints p50/p90/p99 latency overall and per kind, the throughput, the status counts, the
number of 5xx answers and of answers with another status than expected; then stops the server.
Traffic goes to 127.0.0.1 only, is bounded in count (``--requests``) and time (``--max-seconds``)
and the script stops by itself. Exits 1 if any answer was a 5xx or unexpected.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def plan(n: int, n_users: int, n_items: int, seed: int = 0):
    """(kind, method, path, body, expected status) of every request, in a fixed random order."""
    rng = random.Random(seed)
    kinds = (["get"] * 55 + ["post"] * 15 + ["similar"] * 5 + ["unknown_user"] * 10
             + ["k0"] * 5 + ["bad_body"] * 5 + ["k_big"] * 5)
    out = []
    for _ in range(n):
        kind = rng.choice(kinds)
        u = rng.randrange(n_users)
        if kind == "get":
            out.append((kind, "GET", f"/recommend?user={u}&k={rng.randint(1, 50)}", None, 200))
        elif kind == "post":
            users = [rng.randrange(n_users) for _ in range(rng.randint(1, 8))]
            out.append((kind, "POST", "/recommend", json.dumps({"users": users, "k": 10}), 200))
        elif kind == "similar":
            out.append((kind, "GET", f"/similar-items?item={rng.randrange(n_items)}&k=10", None, 200))
        elif kind == "unknown_user":
            bad = rng.choice([-1, n_users, 99999999999999999999])
            out.append((kind, "GET", f"/recommend?user={bad}&k=10", None, 404))
        elif kind == "k0":
            out.append((kind, "GET", f"/recommend?user={u}&k=0", None, 422))
        elif kind == "bad_body":
            out.append((kind, "POST", "/recommend", rng.choice(['{"users": [1', '{"users": "x"}',
                                                               '{"users": []}', 'null']), 422))
        else:  # k beyond the catalogue: at most the unseen items, never a 500
            out.append((kind, "GET", f"/recommend?user={u}&k={min(1000, n_items + 50)}", None, 200))
    return out


def client(port, jobs, lock, results, deadline):
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    while time.monotonic() < deadline:
        with lock:
            if not jobs:
                break
            kind, method, path, body, expect = jobs.pop()
        headers = {"content-type": "application/json"} if body is not None else {}
        t0 = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as e:
            status = f"conn-error: {type(e).__name__}"
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
        results.append((kind, status, expect, time.perf_counter() - t0))
    conn.close()


def pct(values, q):
    return float(np.percentile(values, q)) * 1000 if len(values) else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this")
    args = ap.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="mmrecsys-load-"))
    env = {**os.environ, "PYTHONPATH": str(SRC), "MMRECSYS_CACHE": str(work / "cache")}
    cli = [sys.executable, "-m", "mmrecsys.cli"]
    server = None
    try:
        data = work / "syn"
        subprocess.run(cli + ["data", "synth", "-o", data, "--users", str(args.users), "--items",
                              str(args.items)], env=env, check=True, capture_output=True)
        run = work / "run"
        subprocess.run(cli + ["train", "-m", "lightgcn", "-d", data, "-o", run, "--set", "epochs=2",
                              "--device", "cpu", "--quiet"], env=env, check=True, capture_output=True)
        port = free_port()
        log = open(work / "server.log", "w")
        server = subprocess.Popen(cli + ["serve", str(run), "--host", HOST, "--port", str(port),
                                         "--device", "cpu", "--no-access-log"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        t_start = time.monotonic()
        while True:  # wait for /health
            if server.poll() is not None:
                sys.exit(f"server exited: {(work / 'server.log').read_text()}")
            try:
                c = http.client.HTTPConnection(HOST, port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() - t_start > 120:
                sys.exit("server did not answer /health within 120 s")
            time.sleep(0.25)
        print(f"server up on {HOST}:{port} after {time.monotonic() - t_start:.1f}s "
              f"({args.users} users, {args.items} items, LightGCN)")

        jobs = plan(args.requests, args.users, args.items)[::-1]
        results, lock = [], threading.Lock()
        deadline = time.monotonic() + args.max_seconds
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(port, jobs, lock, results, deadline))
                   for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)

    lat = [r[3] for r in results]
    statuses: dict = {}
    for r in results:
        statuses[r[1]] = statuses.get(r[1], 0) + 1
    n5xx = sum(1 for r in results if isinstance(r[1], int) and r[1] >= 500)
    unexpected = [r for r in results if r[1] != r[2]]
    print(f"{len(results)} requests from {args.clients} clients in {wall:.1f}s "
          f"({len(results) / wall:.0f} req/s)")
    print(f"latency ms: p50 {pct(lat, 50):.1f}  p90 {pct(lat, 90):.1f}  p99 {pct(lat, 99):.1f}  "
          f"max {max(lat) * 1000:.1f}")
    for kind in sorted({r[0] for r in results}):
        v = [r[3] for r in results if r[0] == kind]
        print(f"  {kind:13s} n={len(v):5d}  p50 {pct(v, 50):6.1f}  p99 {pct(v, 99):6.1f}")
    print("status counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)))
    print(f"5xx responses: {n5xx}; unexpected statuses: {len(unexpected)}; "
          f"unsent (time bound): {args.requests - len(results)}")
    sys.exit(0 if n5xx == 0 and not unexpected and len(results) == args.requests else 1)


if __name__ == "__main__":
    main()

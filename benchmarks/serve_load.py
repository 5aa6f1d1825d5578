"""Loopback load test of `backdoorlab serve` (issue 10): throughput and p50/p99 latency, 0 server errors.

Serves the digits demo's BadNets model (runs/demo/badnets.safetensors; `backdoorlab demo` writes it)
behind a STRIP guard calibrated at FPR 1%, on 127.0.0.1 only, and sends a bounded number of requests
(half clean, half stamped) from a few client threads; it stops by itself.

    python benchmarks/serve_load.py [--requests 400] [--threads 4] [--overlays 100]
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time

import httpx
import torch
import uvicorn

from _util import ROOT, md_table, write_result
from backdoorlab.data import clean_subset, load_dataset
from backdoorlab.defenses.filter import FILTERS, Guard
from backdoorlab.io import load_ground_truth, load_model, truth_path
from backdoorlab.serve import create_app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--overlays", type=int, default=100)
    a = ap.parse_args()
    path = ROOT / "runs" / "demo" / "badnets.safetensors"
    model, _ = load_model(path)
    goal, _, _ = load_ground_truth(truth_path(path))
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    calib = clean_subset(train, per_class=50, generator=torch.Generator().manual_seed(0)).x
    calib = calib[torch.randperm(len(calib), generator=torch.Generator().manual_seed(1))]
    guard = Guard.calibrate(FILTERS["strip"](n_overlays=a.overlays), model, calib, fpr=0.01)
    app = create_app(model, guard)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    xs = torch.cat([test.x[:100], goal.apply(test.x[test.y != goal.target][:100])])
    bodies = [(i % 200 >= 100, json.dumps({"inputs": xs[i % 200].tolist()}).encode()) for i in range(a.requests)]
    results = []
    lock = threading.Lock()

    def worker(chunk):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as cl:
            for stamped, b in chunk:
                t = time.perf_counter()
                r = cl.post("/predict", content=b, headers={"content-type": "application/json"})
                dt = time.perf_counter() - t
                w = r.json()["predictions"][0]["withheld"] if r.status_code == 200 else None
                with lock:
                    results.append((r.status_code, dt, stamped, w))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(bodies[i::a.threads],)) for i in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server.should_exit = True
    th.join(timeout=10)
    lat = sorted(r[1] for r in results)
    p = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    errors5 = sum(r[0] >= 500 for r in results)
    frr = sum(r[3] for r in results if not r[2]) / max(1, sum(not r[2] for r in results))
    catch = sum(r[3] for r in results if r[2]) / max(1, sum(r[2] for r in results))
    plain = time.perf_counter()
    for i in range(200):
        model(xs[i:i + 1])
    plain_ms = (time.perf_counter() - plain) / 200 * 1000
    rows = [[a.requests, a.threads, a.overlays, f"{a.requests / wall:.1f}", f"{p(0.5):.1f}", f"{p(0.99):.1f}",
             f"{statistics.mean(lat) * 1000:.1f}", errors5, f"{100 * frr:.1f}", f"{100 * catch:.1f}", f"{plain_ms:.2f}"]]
    body = ("## Guarded prediction server: loopback load test (issue 10)\n\n"
            "digits BadNets model (3x3 square -> 0) behind STRIP calibrated at FPR 1%; JSON requests of one image, "
            "half clean, half stamped; uvicorn on 127.0.0.1, httpx clients.\n\n"
            + md_table(["requests", "client threads", "STRIP overlays", "requests/s", "p50 ms", "p99 ms", "mean ms",
                        "5xx", "clean withheld %", "stamped withheld %", "plain forward ms"], rows)
            + "\n\nLatency is dominated by STRIP's N forwards per input plus JSON parsing; the plain forward "
              "of the same model is in the last column.\n")
    print(rows)
    print(write_result("serve", body))


if __name__ == "__main__":
    main()

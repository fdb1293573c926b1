"""A bounded load test of the sentiment service (companion.serve) on loopback.

Starts ``python -m companion.serve`` on a free local port, waits until /health answers, then for
each concurrency level sends the same fixed number of requests (test sentences of the polarity
corpus, English), at most that many in flight at once, and prints the throughput (requests per
second) and the median and 95th-percentile latency. Nothing leaves the machine; the server is
stopped at the end, also on error.

    .venv/bin/python bench/serve_load.py                        # 1, 2, 4, 8 clients, 96 requests each
    .venv/bin/python bench/serve_load.py --concurrency 1 4 --requests 40 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_level(url: str, texts: list[str], concurrency: int, timeout: float) -> dict:
    """Send every text once with at most `concurrency` requests in flight; latencies in ms."""
    import httpx

    gate, latencies, failures = asyncio.Semaphore(concurrency), [], 0

    async def one(client: httpx.AsyncClient, text: str) -> None:
        nonlocal failures
        async with gate:
            start = time.perf_counter()
            r = await client.post(url, json={"text": text, "language": "en"})
            latencies.append((time.perf_counter() - start) * 1000)
            failures += r.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await one(client, texts[0])  # warm the connection and the model
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(client, t) for t in texts))
        seconds = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(texts), "failures": failures,
            "throughput": len(texts) / seconds, "p50_ms": float(np.percentile(latencies, 50)),
            "p95_ms": float(np.percentile(latencies, 95))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request at most")
    args = parser.parse_args()
    if args.requests < 1 or min(args.concurrency) < 1:
        parser.error("--requests and every --concurrency must be >= 1")

    from companion.corpora import load_polarity

    texts = load_polarity()["test"]["text"][: args.requests]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "companion.serve", "--port", str(port),
                               "--threads", str(args.threads), "--no-assistant"],  # sentiment only
                              cwd=ROOT, env=os.environ.copy())
    try:
        import httpx

        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("the server did not start: see its messages above")
            time.sleep(0.5)
        print(f"server: 127.0.0.1:{port}, {args.threads} torch threads; {os.cpu_count()} CPUs on this machine")
        print(f"{'clients':>7} {'requests':>8} {'failed':>6} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7}")
        for level in args.concurrency:
            r = asyncio.run(run_level(f"http://127.0.0.1:{port}/sentiment", texts, level, args.timeout))
            print(f"{r['concurrency']:>7} {r['requests']:>8} {r['failures']:>6} {r['throughput']:>7.1f} "
                  f"{r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Load test for ``pspnet serve``: N requests from C concurrent clients, several rounds, on loopback only.

Starts ``python -m pspnet serve`` as a subprocess on 127.0.0.1 (a free port), waits for /healthz,
then per round sends ``--requests`` POST /v1/segment requests from ``--concurrency`` clients and
prints failures, p50/p95/max latency, throughput and the server's RSS (current and peak, from
/proc). Every loop is bounded: a per-request timeout and a per-round deadline. The server is
stopped at the end, whatever happens. Exit status 1 when any request failed or RSS grew by more
than ``--max-growth-mib`` from the first round to the last.

    python benchmarks/serve_load.py                       # 3 rounds x 200 requests x 16 clients
    python benchmarks/serve_load.py --size 240 180 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "pspnet" / "samples" / "camvid_0016E5_08059.jpg"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_memory(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc/<pid>/status."""
    text = Path(f"/proc/{pid}/status").read_text()
    kib = {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}
    return kib.get("VmRSS", 0) / 1024, kib.get("VmHWM", 0) / 1024


def image_bytes(path: Path, size: tuple[int, int] | None) -> bytes:
    img = Image.open(path).convert("RGB")
    if size:
        img = img.resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pspnet", "serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
           "--batch-size", str(args.batch_size), "--max-queue", str(args.max_queue), "--log-level", "warning",
           "--device", args.device, *args.server_args]
    print("server:", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen, base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


async def run_round(base: str, body: bytes, n: int, concurrency: int, fmt: str, req_timeout: float,
                    round_timeout: float) -> tuple[list[float], list[str], float]:
    """Latencies of successful requests, failure descriptions, wall time."""
    latencies: list[float] = []
    failures: list[str] = []
    todo = iter(range(n))  # shared: each client takes the next index until none are left

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in todo:
            t = time.perf_counter()
            try:
                r = await client.post(f"/v1/segment?format={fmt}", content=body,
                                      headers={"content-type": "image/jpeg"})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    failures.append(f"HTTP {r.status_code}: {r.text[:120]}")
            except httpx.HTTPError as err:
                failures.append(f"{type(err).__name__}: {err}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=req_timeout, limits=limits) as client:
        tasks = [asyncio.create_task(client_loop(client)) for _ in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=round_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            failures.append(f"round deadline of {round_timeout:.0f} s reached; "
                            f"{n - len(latencies) - len(failures)} requests not sent or unanswered")
    return latencies, failures, time.perf_counter() - start


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def batch_sizes(base: str) -> dict[int, int]:
    text = httpx.get(base + "/metrics", timeout=10).text
    return {int(k): int(v) for k, v in re.findall(r'^pspnet_batch_size_total\{size="(\d+)"\} (\d+)$', text, re.M)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="camvid")
    p.add_argument("--device", default="auto")
    p.add_argument("--image", type=Path, default=SAMPLE)
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="resize the image first (default: as is)")
    p.add_argument("--requests", type=int, default=200, help="requests per round (default 200)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--format", default="png", choices=["png", "json"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--round-timeout", type=float, default=900.0)
    p.add_argument("--max-growth-mib", type=float, default=50.0, help="RSS growth first->last round counted as a leak")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("server_args", nargs="*", help="extra `pspnet serve` arguments after --")
    args = p.parse_args(argv)

    body = image_bytes(args.image, tuple(args.size) if args.size else None)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    rounds = []
    try:
        wait_ready(proc, base, 180)
        rss0, _ = proc_memory(proc.pid)
        for _ in range(2):  # warm-up: first-call allocations and kernel selection are not steady state
            httpx.post(base + "/v1/segment", content=body, timeout=args.request_timeout).raise_for_status()
        w, h = Image.open(io.BytesIO(body)).size
        print(f"image {w}x{h} ({len(body) / 1024:.0f} KiB JPEG), {args.requests} requests x {args.concurrency} clients "
              f"x {args.rounds} rounds; server RSS after start {rss0:.0f} MiB", flush=True)
        print(f"{'round':>5} {'ok':>4} {'fail':>4} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'req/s':>6} "
              f"{'RSS MiB':>8} {'peak MiB':>8}", flush=True)
        for k in range(1, args.rounds + 1):
            lat, fails, wall = asyncio.run(run_round(base, body, args.requests, args.concurrency, args.format,
                                                     args.request_timeout, args.round_timeout))
            rss, peak = proc_memory(proc.pid)
            row = {"round": k, "ok": len(lat), "failed": len(fails), "p50_s": quantile(lat, 0.50),
                   "p95_s": quantile(lat, 0.95), "max_s": max(lat, default=float("nan")),
                   "req_per_s": len(lat) / wall, "rss_mib": rss, "peak_rss_mib": peak, "failures": fails[:5]}
            rounds.append(row)
            print(f"{k:>5} {row['ok']:>4} {row['failed']:>4} {row['p50_s']:>7.2f} {row['p95_s']:>7.2f} "
                  f"{row['max_s']:>7.2f} {row['req_per_s']:>6.2f} {rss:>8.0f} {peak:>8.0f}", flush=True)
            for f in fails[:5]:
                print("   ", f)
        sizes = batch_sizes(base)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    failed = sum(r["failed"] for r in rounds)
    growth = rounds[-1]["rss_mib"] - rounds[0]["rss_mib"] if rounds else 0.0
    mean_batch = sum(s * n for s, n in sizes.items()) / max(1, sum(sizes.values()))
    print(f"failures {failed}; RSS growth round 1 -> {len(rounds)}: {growth:+.0f} MiB; peak RSS "
          f"{max(r['peak_rss_mib'] for r in rounds):.0f} MiB; batches by size {dict(sorted(sizes.items()))} "
          f"(mean {mean_batch:.2f})")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "batch_sizes": sizes, "rss_growth_mib": growth,
                                         "image": [w, h], "concurrency": args.concurrency}, indent=2))
    return int(failed > 0 or growth > args.max_growth_mib)


if __name__ == "__main__":
    sys.exit(main())

"""Load: concurrent clients against one `icseg serve` on loopback, for a fixed time per level.

    python bench/bench_load.py                       # 1, 8 and 32 clients x 60 s, then the busy run
    python bench/bench_load.py --duration 10         # the same, shorter
    python bench/bench_load.py --clients 8 --no-busy-run --mode prompt

Each client is an asyncio task with its own httpx connection that sends POST /segment back to back (a
closed loop: the next request leaves when the answer is in) until the time is up; requests in flight then
finish. Every request carries a 256 x 256 PNG query and S = 16 support pairs of 256 x 256 PNGs (inline:
each request is its own support set and its own model pass; ``--mode prompt`` sends a stored prompt's id
instead, which the server micro-batches). Reported per level: requests/s, latency p50/p95/p99 of the 200s,
errors (anything but 200 and 429, or no answer), 429 busy answers and how fast they came, the deepest
queue that /metrics reported (icseg_queue_depth, sampled twice a second) and the server's peak RSS
(sampled ten times a second with psutil; VmHWM for the whole run).

The busy run restarts the server with a small queue (ICSEG_QUEUE_SIZE=--busy-queue) under the largest
client count, to show the answer to a full queue: an immediate 429 with Retry-After, never a timeout.
Clients there wait Retry-After (at most 5 s) after a 429, as the SDK does.

Weights: model/weights/icseg-default.safetensors when it exists, else a network of the UniverSeg v1 shape
(nf 64, 128 x 128) with SEEDED RANDOM weights in a temporary file: speed figures only, not a model.
OMP_WAIT_POLICY defaults to PASSIVE for the server (see bench_service.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP; the server inherits it

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from _common import ROOT, form_files, make_task, random_v1_weights, start_server  # noqa: E402

DEFAULT_WEIGHTS = ROOT / "model" / "weights" / "icseg-default.safetensors"


@dataclass
class Level:
    """What one load level measured."""

    clients: int
    duration_s: float
    queue_size: int | None = None
    latencies_ms: list[float] = field(default_factory=list)  # of 200 answers
    busy_ms: list[float] = field(default_factory=list)  # of 429 answers
    errors: dict[str, int] = field(default_factory=dict)
    depths: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    probe_ms: list[float] = field(default_factory=list)  # GET /metrics while loaded: how quickly the loop answers
    elapsed_s: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def summary(self) -> dict:
        def pct(values, q):
            return float(np.percentile(values, q)) if values else float("nan")

        return {
            "clients": self.clients, "duration_s": self.duration_s, "queue_size": self.queue_size,
            "ok": len(self.latencies_ms), "requests_per_s": len(self.latencies_ms) / self.elapsed_s,
            "p50_ms": pct(self.latencies_ms, 50), "p95_ms": pct(self.latencies_ms, 95),
            "p99_ms": pct(self.latencies_ms, 99), "errors": sum(self.errors.values()), "error_kinds": self.errors,
            "busy": len(self.busy_ms), "busy_p50_ms": pct(self.busy_ms, 50), "busy_p99_ms": pct(self.busy_ms, 99),
            "busy_max_ms": max(self.busy_ms, default=float("nan")),
            "max_queue_depth": max(self.depths, default=0.0),
            "peak_rss_mb": max(self.rss_mb, default=float("nan")), "elapsed_s": self.elapsed_s,
            "metrics_probe_p50_ms": pct(self.probe_ms, 50), "metrics_probe_p99_ms": pct(self.probe_ms, 99),
        }


# -- the server ---------------------------------------------------------------------------------------------


def vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# -- the load -----------------------------------------------------------------------------------------------


def encode_form(files: list, data: dict) -> tuple[bytes, dict[str, str]]:
    """The multipart body, encoded once: the clients' own CPU time stays out of the latencies."""
    request = httpx.Request("POST", "http://localhost/segment", files=files, data=data)
    return request.read(), {"content-type": request.headers["content-type"]}


async def _client(url: str, body: bytes, headers: dict, deadline: float, level: Level, honour_retry_after: bool):
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(900, connect=30)) as http:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                response = await http.post("/segment", content=body, headers=headers)
            except httpx.HTTPError as exc:
                level.error(type(exc).__name__)
                continue
            ms = (time.perf_counter() - start) * 1000
            if response.status_code == 200:
                level.latencies_ms.append(ms)
            elif response.status_code == 429:
                level.busy_ms.append(ms)
                if honour_retry_after:
                    await asyncio.sleep(min(5.0, float(response.headers.get("retry-after", 1))))
            else:
                level.error(str(response.status_code))


async def _watch(url: str, pid: int, level: Level, stop: asyncio.Event) -> None:
    """Queue depth from /metrics (2 Hz) and the server's RSS (10 Hz) while the clients run."""
    process = psutil.Process(pid)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        tick = 0
        while not stop.is_set():
            level.rss_mb.append(process.memory_info().rss / 2**20)
            if tick % 5 == 0:
                try:
                    start = time.perf_counter()
                    text = (await http.get("/metrics")).text
                    level.probe_ms.append((time.perf_counter() - start) * 1000)
                    level.depths.append(float(re.search(r"^icseg_queue_depth (\S+)", text, re.M).group(1)))
                except (httpx.HTTPError, AttributeError):
                    pass
            tick += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except TimeoutError:
                pass


async def run_level(url: str, pid: int, body: bytes, headers: dict, clients: int, duration: float,
                    honour_retry_after: bool = False, queue_size: int | None = None) -> Level:
    level = Level(clients, duration, queue_size)
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch(url, pid, level, stop))
    start = time.monotonic()
    deadline = start + duration
    await asyncio.gather(*(_client(url, body, headers, deadline, level, honour_retry_after) for _ in range(clients)))
    level.elapsed_s = time.monotonic() - start  # the window plus the drain of the requests in flight
    stop.set()
    await watcher
    return level


def server_busy_times(url: str) -> dict[float, float]:
    """The server's own latency histogram of the requests its middleware answered (here: the 429s)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    pattern = r'^icseg_request_seconds_bucket\{le="([^"]+)",method="POST",route="unmatched"\} (\S+)'
    return {float(le): float(count) for le, count in re.findall(pattern, text, re.M)}


def server_busy_quantiles(before: dict, after: dict) -> dict:
    """Upper bounds (histogram buckets) of the server-side p50/p99 of the 429 answers, in ms."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts.get(float("inf"), 0.0)

    def bound(q):
        return next((le * 1000 for le, c in counts.items() if total and c >= q * total), float("nan"))

    return {"server_busy_p50_ms_at_most": bound(0.5), "server_busy_p99_ms_at_most": bound(0.99)}


# -- report -------------------------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    print("| clients | queue size | requests/s | p50 (ms) | p95 (ms) | p99 (ms) | errors | 429: count, client p50 / "
          "p99 (ms), server p99 (ms) | max queue depth | peak RSS (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        busy = "0"
        if r["busy"]:
            busy = (f"{r['busy']}, {r['busy_p50_ms']:.0f} / {r['busy_p99_ms']:.0f}, "
                    f"<= {r['server_busy_p99_ms_at_most']:.0f}")
        print(f"| {r['clients']} | {r['queue_size']} | {r['requests_per_s']:.2f} | {r['p50_ms']:.0f} | "
              f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | {busy} | {r['max_queue_depth']:.0f} | "
              f"{r['peak_rss_mb']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per level")
    parser.add_argument("--support", type=int, default=16, help="support items S")
    parser.add_argument("--image-size", type=int, default=256, help="side of the query and support PNGs")
    parser.add_argument("--mode", choices=["inline", "prompt"], default="inline",
                        help="inline: support files in every request; prompt: a stored prompt's id")
    parser.add_argument("--queue-size", type=int, default=None, help="ICSEG_QUEUE_SIZE (default: the server's)")
    parser.add_argument("--busy-queue", type=int, default=4, help="ICSEG_QUEUE_SIZE of the busy run")
    parser.add_argument("--busy-clients", type=int, default=None, help="clients of the busy run (default: the most)")
    parser.add_argument("--no-busy-run", action="store_true", help="skip the run against a small queue")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=None, help="ICSEG_TORCH_THREADS of the server")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    query, support = form_files(*make_task(args.image_size, args.support))
    extra = {}
    if args.torch_threads:
        extra["ICSEG_TORCH_THREADS"] = str(args.torch_threads)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if DEFAULT_WEIGHTS.exists():
            weights, described = None, f"the default model ({DEFAULT_WEIGHTS.name})"
        else:
            weights = random_v1_weights(tmp / "v1-random.safetensors")
            described = "UniverSeg v1 shape (nf 64, 128 x 128) with SEEDED RANDOM weights: speed figures only"

        runs = [(args.queue_size, args.clients, False)]
        if not args.no_busy_run:
            runs.append((args.busy_queue, [args.busy_clients or max(args.clients)], True))
        hwm = {}
        for queue_size, levels, honour in runs:
            env = dict(extra)
            if queue_size is not None:
                env["ICSEG_QUEUE_SIZE"] = str(queue_size)
            proc, url = start_server(weights, tmp / "data", args.device, tmp / "server.log", timeout=180, **env)
            try:
                with httpx.Client(base_url=url, timeout=600) as http:
                    limit = http.get("/info").json()
                    files, data = query + support, {}
                    if args.mode == "prompt":
                        data = {"prompt_id": http.post("/prompts", files=support).json()["id"]}
                        files = query
                    assert http.post("/segment", files=files, data=data).status_code == 200  # warm-up
                body, headers = encode_form(files, data)
                for clients in levels:
                    before = server_busy_times(url)
                    level = asyncio.run(run_level(url, proc.pid, body, headers, clients, args.duration, honour,
                                                  queue_size))
                    row = level.summary()
                    row.update(server_busy_quantiles(before, server_busy_times(url)))
                    row["queue_size"] = queue_size if queue_size is not None else "default"
                    rows.append(row)
                    print(f"# {clients} clients, queue {row['queue_size']}: {row['ok']} answered in "
                          f"{row['elapsed_s']:.0f} s, {row['errors']} errors, {row['busy']} busy", file=sys.stderr)
                hwm[str(queue_size)] = vm_hwm_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(60)

    print(f"# bench_load: {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, torch {torch.__version__}, device {args.device}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"# network: {described}; max support {limit['max_support']}")
    print(f"# {args.mode} support, S = {args.support}, {args.image_size} x {args.image_size} PNGs, "
          f"{args.duration:.0f} s per level, closed-loop clients\n")
    print_table(rows)
    print(f"\nserver VmHWM (peak RSS over each server's life): {', '.join(f'{v:.0f} MB' for v in hwm.values())}")
    single = next((r for r in rows if r["clients"] == 1), None)
    eight = next((r for r in rows if r["clients"] == 8 and r["busy"] == 0), None)
    if single and eight:
        depth = max(eight["max_queue_depth"], 1)
        bound = 3 * single["p50_ms"] * depth
        print(f"target: p99 at 8 clients <= 3 x single-client latency x reported queue depth: "
              f"{eight['p99_ms']:.0f} ms <= 3 x {single['p50_ms']:.0f} ms x {depth:.0f} = {bound:.0f} ms: "
              f"{'met' if eight['p99_ms'] <= bound else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "vm_hwm_mb": hwm, "network": described}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

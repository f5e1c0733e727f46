"""Service overhead and throughput: /segment on a real uvicorn server against a direct Segmenter call.

    python bench/bench_service.py [--device cpu] [--repeats 5] [--support 16] [--clients 8]

One run prints, side by side:

* end-to-end latency of POST /segment (a 256 x 256 PNG query, S = 16 PNG support pairs sent inline,
  and the same through a stored prompt) against ``Segmenter.predict`` on the same decoded arrays in
  this process, and the overhead in per cent (medians; the two are measured alternately so that
  drift on a shared machine hits both);
* throughput (requests/s) of 1 client against 8 concurrent clients on one stored prompt.

The network has the UniverSeg v1 shape (nf = 64, 128 x 128) with seeded random weights written to a
temporary file: these are speed figures only, not a model. The server is ``icseg serve`` in its own
process on a free loopback port.

OMP_WAIT_POLICY defaults to PASSIVE here (for this process and the server): on a shared 2-vCPU machine
libgomp's default spin-waiting made the single-threaded bench process's direct call ~1.8x slower
(3.0 s against 1.7 s, measured) while the server, whose several threads run torch, was not affected
(libgomp throttles spinning when it has more threads than CPUs). Set it explicitly to compare otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP; see the docstring

import httpx  # noqa: E402
import torch  # noqa: E402
from _common import form_files, make_task, random_v1_weights, start_server  # noqa: E402

from model.segmenter import Segmenter  # noqa: E402
from model.weights import load_model  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def server_timing(response: httpx.Response) -> dict[str, float]:
    """The service's own split of the request: {"decode": ms, "model": ms, "encode": ms}."""
    response.raise_for_status()
    parts = (p.split(";dur=") for p in response.headers["server-timing"].split(", "))
    return {name: float(value) for name, value in parts}


def batch_stats(metrics: str) -> tuple[float, float]:
    total = float(re.search(r"^icseg_batch_queries_sum (\S+)", metrics, re.M).group(1))
    passes = float(re.search(r"^icseg_batch_queries_count (\S+)", metrics, re.M).group(1))
    return total, passes


def throughput(url: str, files: list, data: dict, clients: int, per_client: int) -> float:
    """Requests per second of ``clients`` threads, each sending ``per_client`` requests back to back."""
    errors = []

    def client():
        with httpx.Client(base_url=url, timeout=600) as http:
            for _ in range(per_client):
                response = http.post("/segment", files=files, data=data)
                if response.status_code != 200:
                    errors.append(response.text)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(errors[0])
    return clients * per_client / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed requests per latency figure")
    parser.add_argument("--support", type=int, default=16, help="support items S")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=2, help="requests per client in the throughput runs")
    args = parser.parse_args(argv)

    query, pairs = make_task(args.image_size, args.support)
    query_file, support = form_files(query, pairs)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = random_v1_weights(tmp / "v1-random.safetensors")
        segmenter = Segmenter(load_model(weights, device=args.device))
        images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
        prepared = segmenter.prepare_support(images, masks)

        proc, url = start_server(weights, tmp / "data", args.device, tmp / "server.log")
        try:
            with httpx.Client(base_url=url, timeout=600) as http:
                prompt_id = http.post("/prompts", files=support).json()["id"]
                splits = {"inline support": [], "stored prompt": []}
                inline_http = lambda: splits["inline support"].append(  # noqa: E731
                    server_timing(http.post("/segment", files=query_file + support)))
                prompt_http = lambda: splits["stored prompt"].append(  # noqa: E731
                    server_timing(http.post("/segment", files=query_file, data={"prompt_id": prompt_id})))
                inline_direct = lambda: segmenter.predict(query, images, masks)  # noqa: E731
                prompt_direct = lambda: segmenter.predict(query, support=prepared)  # noqa: E731
                for fn in (inline_direct, inline_http, prompt_direct, prompt_http):  # warm-up
                    fn()
                splits = {k: [] for k in splits}
                rows = {}
                for name, direct, served in (("inline support", inline_direct, inline_http),
                                             ("stored prompt", prompt_direct, prompt_http)):
                    d, s = [], []
                    for _ in range(args.repeats):  # alternate, so that machine drift hits both
                        d.append(timed(direct))
                        s.append(timed(served))
                    rows[name] = (statistics.median(d), statistics.median(s))

                data = {"prompt_id": prompt_id}
                one = throughput(url, query_file, data, 1, args.per_client * 2)
                before = batch_stats(http.get("/metrics").text)
                many = throughput(url, query_file, data, args.clients, args.per_client)
                after = batch_stats(http.get("/metrics").text)
        finally:
            proc.terminate()
            proc.wait(30)

    queries, passes = after[0] - before[0], after[1] - before[1]
    print(f"# bench_service: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"device {args.device}")
    print("# network: UniverSeg v1 shape (nf 64, 128 x 128) with SEEDED RANDOM weights: speed figures only")
    print(f"# query PNG {args.image_size}x{args.image_size}, S = {args.support}, medians of {args.repeats}\n")
    print("| path | direct Segmenter.predict (ms) | POST /segment (ms) | overhead | server: decode / model / "
          "encode (ms) | outside the model |")
    print("|---|---:|---:|---:|---|---:|")
    for name, (d, s) in rows.items():
        split = {k: statistics.median(t[k] for t in splits[name]) for k in ("decode", "model", "encode")}
        outside = s - split["model"]
        print(f"| {name} | {d:.0f} | {s:.0f} | {100 * (s - d) / d:+.1f} % | {split['decode']:.1f} / "
              f"{split['model']:.0f} / {split['encode']:.1f} | {outside:.0f} ms ({100 * outside / s:.1f} %) |")
    print("\n| clients (stored prompt) | requests/s | vs 1 client |\n|---|---:|---:|")
    print(f"| 1 | {one:.3f} | 1.00x |")
    print(f"| {args.clients} | {many:.3f} | {many / one:.2f}x |")
    print(f"\nmicro-batching with {args.clients} clients: {passes:.0f} model passes for {queries:.0f} queries "
          f"(mean {queries / max(passes, 1):.2f} queries per pass)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

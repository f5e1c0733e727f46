"""The memory cases of issue 13 (finding 1) against one `icseg serve`: each answer and the server's peak RSS.

    python bench/bench_hostile.py                 # every case at full size, then 8 of the first at once
    python bench/bench_hostile.py --route /jobs   # the same against the job budget

One server (default settings, the embedded default model), loopback. Each case is sent once and its
status, error code and the server's peak RSS so far (Linux VmHWM: exact, not sampled) are printed; the
last line sends 8 copies of the first case concurrently. Before the per-request budget these cases took
4.7 GB, 30 GB, 4 GB, 2.3 GB and more; the acceptance bound is a peak under 1.5 GB with every case a 4xx.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from _common import ROOT, start_server

sys.path.insert(0, str(ROOT / "tests" / "system" / "reliability"))
from hostilekit import (  # noqa: E402
    big_png,
    big_support_pair,
    cube_pair,
    deflated_dicom,
    float64_header_bomb,
    jpeg_declaring,
    labels_mask,
    long_line_nifti2,
    nifti_gz,
    one_slice_nifti,
    png_gray,
)


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def form(query: bytes, images: list[bytes], masks: list[bytes]) -> list[tuple]:
    out = [("query", ("q", query))]
    out += [("support_images", (f"i{i}", b)) for i, b in enumerate(images)]
    out += [("support_masks", (f"m{i}", b)) for i, b in enumerate(masks)]
    return out


def cases() -> list[tuple[str, list[tuple], dict]]:
    small = png_gray(np.full((64, 64), 50, np.uint8))
    big_image, big_mask = big_support_pair(6000)
    small_image = png_gray(np.pad(np.full((32, 32), 200, np.uint8), 16))
    small_mask = png_gray(np.pad(np.ones((32, 32), np.uint8), 16))
    cube_image, cube_mask = cube_pair(400)
    query_volume = nifti_gz(np.zeros((64, 64, 32), np.uint8))
    return [
        ("6000^2 PNG query, 64^2 support, 16 labels", form(big_png(6000), [small], [labels_mask(64, 16)]), {}),
        ("64 support pairs of 6000^2 PNG", form(small_image, [big_image] * 64, [big_mask] * 64), {}),
        ("3D support pair of 400^3 (.nii.gz)", form(query_volume, [cube_image], [cube_mask]), {}),
        ("one-slice NIfTI of 7000^2", form(one_slice_nifti(7000), [small_image], [small_mask]), {}),
        ("100 M float64 voxels in a .nii.gz", form(float64_header_bomb(100_000_000), [small_image], [small_mask]), {}),
        ("deflated DICOM with a 300 MB element", form(deflated_dicom(300), [small_image], [small_mask]), {}),
        ("JPEG of 333 bytes declaring 6000^2", form(jpeg_declaring(6000, 6000), [small_image], [small_mask]), {}),
        ("1 x 1 x 8,000,000 NIfTI-2, ensemble 16", form(long_line_nifti2(), [small_image], [small_mask]),
         {"ensemble": "16"}),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", default="/segment", choices=["/segment", "/jobs"])
    parser.add_argument("--concurrent", type=int, default=8, help="copies of the first case sent at once")
    args = parser.parse_args()
    print("building the hostile files ...", flush=True)
    built = cases()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(None, Path(tmp) / "data", "cpu", Path(tmp) / "server.log",
                                 ICSEG_MAX_UPLOAD_MB="200")
        try:
            with httpx.Client(base_url=url, timeout=600) as client:
                image = png_gray(np.pad(np.full((128, 128), 200, np.uint8), 64))
                mask = png_gray(np.pad(np.ones((128, 128), np.uint8), 64))
                warm = client.post("/segment", files=form(image, [image] * 4, [mask] * 4))
                print(f"\n{platform.node()}: icseg serve, default settings, {args.route}; warm-up {warm.status_code}, "
                      f"peak RSS {vm_hwm_mb(proc.pid):.0f} MB\n")
                print("| case | sent (KB) | answer | code | time (s) | server peak RSS (MB) |\n"
                      "|---|---:|---|---|---:|---:|")
                for name, files, data in built:
                    size = sum(len(f[1][1]) for f in files) / 1024
                    began = time.perf_counter()
                    response = client.post(args.route, files=files, data=data)
                    code = response.json()["error"]["code"] if response.status_code >= 400 else "-"
                    print(f"| {name} | {size:,.0f} | {response.status_code} | {code} | "
                          f"{time.perf_counter() - began:.2f} | {vm_hwm_mb(proc.pid):.0f} |", flush=True)

                def one(_):
                    with httpx.Client(base_url=url, timeout=600) as c:
                        return c.post(args.route, files=built[0][1]).status_code

                began = time.perf_counter()
                with ThreadPoolExecutor(args.concurrent) as pool:
                    statuses = sorted(pool.map(one, range(args.concurrent)))
                print(f"| {args.concurrent} x the first case at once | - | {statuses} | - | "
                      f"{time.perf_counter() - began:.2f} | {vm_hwm_mb(proc.pid):.0f} |")
                ready = client.get("/readyz").status_code
                print(f"\nafter the cases: /readyz {ready}; server peak RSS {vm_hwm_mb(proc.pid):.0f} MB")
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Pack the training tasks of a run into one compressed .npz (for the GPU burst: the working tree that travels
to an accelerator machine is limited to 64 MiB).

    python scripts/pack-training-data.py --data-root ../shared/datasets \
        --exclude ph2,kvasir_seg,faz_octa,ddti_thyroid,aorta_ct,left_atrium_mri,monuseg,em_membrane \
        --out artifacts/train-pack.npz [--size 128] [--max-images 160] [--max-mib 48]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.datasets import load_tasks  # noqa: E402
from data.pack import write_pack  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--exclude", default="", help="comma-separated datasets kept out (the validation set)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--max-images", type=int, default=160, help="per dataset and axis")
    p.add_argument("--empty-slice-step", type=int, default=8)
    p.add_argument("--max-mib", type=float, default=48.0, help="fail if the pack is larger")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    exclude = tuple(x for x in args.exclude.split(",") if x)
    tasks = load_tasks(args.data_root, None, args.size, exclude=exclude, empty_step=args.empty_slice_step)
    info = write_pack(args.out, tasks, args.max_images)
    mib = Path(args.out).stat().st_size / 2**20
    print(f"{args.out}: {len(tasks)} datasets, {info['tasks']} tasks, {mib:.1f} MiB")
    if mib > args.max_mib:
        print(f"pack is over {args.max_mib} MiB: lower --max-images or --size", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds and Dice of a BraTS-sized volume (155 slices, 4 labels, 4 support volumes): the old behaviour
(64 support slices per label, every slice) next to the cost-aware defaults, in one run.

    python bench/bench_volume.py                       # BraTS from ../shared when present, else synthetic
    python bench/bench_volume.py --query-step 4        # every 4th query slice: the same positions, 4x cheaper
    python bench/bench_volume.py --queries pat0001 pat0006 --configs new new+cascade

The model is the embedded default (``Segmenter.from_pretrained()``). Synthetic volumes (no BraTS on disk)
are speed figures only. ``--query-step k`` keeps every k-th query slice (support volumes stay whole), so the
relative positions, and hence the skipping, are those of the full volume; seconds scale by about k.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.io import read_image, read_mask  # noqa: E402
from model import volume as volumes  # noqa: E402
from model import volume_plan as plan  # noqa: E402
from model import volume_run  # noqa: E402
from model.segmenter import Segmenter  # noqa: E402
from model.volume_plan import VolumeOptions  # noqa: E402

BRATS = ROOT.parent / "shared" / "datasets" / "brats_deepmedic"
CONFIGS = {  # VolumeOptions fields; "floor": volume_run.MIN_PASS_ITEMS; "bf16": CPU bf16 autocast;
    # "spacing": volume_plan.SUPPORT_SPACING (the least relative depth between two support slices of one volume);
    # "refine_at", "refine_any": volume_run.REFINE_THRESHOLD and REFINE_ANY_LABEL (which coarse gaps are refined);
    # "centred": volume_plan.SUPPORT_CENTRED (each volume's share centred on the query's depth);
    # "scout": volume_run.COARSE_SUPPORT (support slices of the coarse pass; the budget then goes to the structure);
    # "refine_area": volume_run.REFINE_AREA (the least foreground of a coarse slice that refines, relative)
    "old": {"support_slices": 64, "skip_margin": None, "coarse": 1},  # 16 per volume x 4 volumes, every slice
    "prev": {"support_slices": 16, "skip_margin": 0.1, "coarse": 1, "floor": 1},  # the first defaults
    "new": {},  # the defaults
    "b16": {"support_slices": 16, "skip_margin": 0.1, "coarse": 1},  # prev + passes of >= 64 support items
    "b8": {"support_slices": 8, "skip_margin": 0.1, "coarse": 1},
    "b8+sp0.02": {"support_slices": 8, "skip_margin": 0.1, "coarse": 1, "spacing": 0.02},
    "b8+sp0.05": {"support_slices": 8, "skip_margin": 0.1, "coarse": 1, "spacing": 0.05},
    "b8+sp0.1": {"support_slices": 8, "skip_margin": 0.1, "coarse": 1, "spacing": 0.1},
    "b8+sp0.15": {"support_slices": 8, "skip_margin": 0.1, "coarse": 1, "spacing": 0.15},
    "b8+sp0.2": {"support_slices": 8, "skip_margin": 0.1, "coarse": 1, "spacing": 0.2},
    "b12+sp0.08": {"support_slices": 12, "skip_margin": 0.1, "coarse": 1, "spacing": 0.08},
    "b16+sp0.05": {"support_slices": 16, "skip_margin": 0.1, "coarse": 1, "spacing": 0.05},
    "b16+sp0.1": {"support_slices": 16, "skip_margin": 0.1, "coarse": 1, "spacing": 0.1},
    "b24+sp0.05": {"support_slices": 24, "skip_margin": 0.1, "coarse": 1, "spacing": 0.05},
    "b32+sp0.03": {"support_slices": 32, "skip_margin": 0.1, "coarse": 1, "spacing": 0.03},
    "b12+c3+sp0.08": {"support_slices": 12, "skip_margin": 0.1, "coarse": 3, "spacing": 0.08},
    "b16+c3+sp0.05": {"support_slices": 16, "skip_margin": 0.1, "coarse": 3, "spacing": 0.05},
    "b16+c3+sp0.1": {"support_slices": 16, "skip_margin": 0.1, "coarse": 3, "spacing": 0.1},
    "b8+c3+sp0.1": {"support_slices": 8, "skip_margin": 0.1, "coarse": 3, "spacing": 0.1},
    "b8+c4+sp0.1": {"support_slices": 8, "skip_margin": 0.1, "coarse": 4, "spacing": 0.1},
    "b8+c3+sp0.1+m0.05": {"support_slices": 8, "skip_margin": 0.05, "coarse": 3, "spacing": 0.1},
    "b8+c3+sp0.05": {"support_slices": 8, "skip_margin": 0.1, "coarse": 3, "spacing": 0.05},
    "b8+c2+sp0.1": {"support_slices": 8, "skip_margin": 0.1, "coarse": 2, "spacing": 0.1},
    "b8+c3+sp0.1+any": {"support_slices": 8, "skip_margin": 0.1, "coarse": 3, "spacing": 0.1, "refine_any": True},
    "b8+c3+sp0.1+r0.3": {"support_slices": 8, "skip_margin": 0.1, "coarse": 3, "spacing": 0.1, "refine_at": 0.3},
    "b8+c3+sp0.1+ctr": {"support_slices": 8, "skip_margin": 0.1, "coarse": 3, "spacing": 0.1, "centred": True},
    "b8+c3+sp0.05+ctr": {"support_slices": 8, "skip_margin": 0.1, "coarse": 3, "spacing": 0.05, "centred": True},
    "b12+c3+sp0.05+ctr": {"support_slices": 12, "skip_margin": 0.1, "coarse": 3, "spacing": 0.05, "centred": True},
    "b8+c4+sp0.1+ctr": {"support_slices": 8, "skip_margin": 0.1, "coarse": 4, "spacing": 0.1, "centred": True},
    "b8+c5+sp0.1+ctr": {"support_slices": 8, "skip_margin": 0.1, "coarse": 5, "spacing": 0.1, "centred": True},
    "b8+c4+sp0.1+ctr+m0.05": {"support_slices": 8, "skip_margin": 0.05, "coarse": 4, "spacing": 0.1,
                              "centred": True},
    "b16+c6+sp0.05+s8": {"support_slices": 16, "skip_margin": 0.1, "coarse": 6, "spacing": 0.05, "scout": 8},
    "b16+c4+sp0.05+s8": {"support_slices": 16, "skip_margin": 0.1, "coarse": 4, "spacing": 0.05, "scout": 8},
    "b12+c6+sp0.08+s4": {"support_slices": 12, "skip_margin": 0.1, "coarse": 6, "spacing": 0.08, "scout": 4},
    "b16+c6+sp0.05+s4": {"support_slices": 16, "skip_margin": 0.1, "coarse": 6, "spacing": 0.05, "scout": 4},
    "b12+c6+sp0.08+s4+m0.05": {"support_slices": 12, "skip_margin": 0.05, "coarse": 6, "spacing": 0.08, "scout": 4},
    # +raF: a coarse slice refines only when its foreground covers F x the label's median area in the support
    "b12+c6+sp0.08+s4+ra0.5": {"support_slices": 12, "skip_margin": 0.1, "coarse": 6, "spacing": 0.08, "scout": 4,
                               "refine_area": 0.5},
    "b12+c8+sp0.08+s4+ra0.5": {"support_slices": 12, "skip_margin": 0.1, "coarse": 8, "spacing": 0.08, "scout": 4,
                               "refine_area": 0.5},
    "b8+c4+sp0.1+any": {"support_slices": 8, "skip_margin": 0.1, "coarse": 4, "spacing": 0.1, "refine_any": True},
    "b16+c2": {"support_slices": 16, "skip_margin": 0.1, "coarse": 2},
    "b16+c3": {"support_slices": 16, "skip_margin": 0.1, "coarse": 3},
    "b8+c2": {"support_slices": 8, "skip_margin": 0.1, "coarse": 2},
    "b8+c3": {"support_slices": 8, "skip_margin": 0.1, "coarse": 3},
    "b8+c4": {"support_slices": 8, "skip_margin": 0.1, "coarse": 4},
    "b8+c3+m0.05": {"support_slices": 8, "skip_margin": 0.05, "coarse": 3},
    "b16+m0.05": {"support_slices": 16, "skip_margin": 0.05, "coarse": 1},
    "new+cascade": {"cascade": True},
    "s8": {"support_slices": 8},
    "m0.05": {"skip_margin": 0.05},
    "new+bf16": {"bf16": True},  # the defaults under CPU bf16 autocast (not a product option: measured here)
    "new+cascade+bf16": {"cascade": True, "bf16": True},
}

KNOBS = {  # config key -> the in-process setting it overrides for one run (restored after it)
    "floor": (volume_run, "MIN_PASS_ITEMS"), "spacing": (plan, "SUPPORT_SPACING"), "centred": (plan, "SUPPORT_CENTRED"),
    "refine_at": (volume_run, "REFINE_THRESHOLD"), "refine_any": (volume_run, "REFINE_ANY_LABEL"),
    "scout": (volume_run, "COARSE_SUPPORT"), "refine_area": (volume_run, "REFINE_AREA"),
}
for _name, _options in CONFIGS.items():  # a "bN..." name spells its plan out: no spacing, scout or area unless named
    if _name.startswith("b"):
        _options.setdefault("spacing", 0.0)
        _options.setdefault("scout", None)
        _options.setdefault("refine_area", 0.0)


def bf16(segmenter: Segmenter):
    """The segmenter's torch door under bf16 autocast on the CPU (what fast-cl-bf16 in bench_network times)."""
    plain = segmenter.predict_torch

    def predict_torch(query, support_images, support_masks):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return plain(query, support_images, support_masks)

    return predict_torch


def load_brats(folder: Path, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for name in names:
        [image] = sorted((folder / "images").glob(f"*{name}*.nii.gz"))
        mask = folder / "masks" / image.name
        out.append((read_image(image).array, read_mask(mask).array))
    return out


def load_png_volumes(folder: Path, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Slices named ``<case>_<slice>.png`` (images/ and masks/) stacked per case, in slice order, into small
    (H, W, d) volumes: a 3D-like set rebuilt from 2D slices."""
    out = []
    for name in names:
        paths = sorted((folder / "images").glob(f"{name}_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        images = [read_image(p).array for p in paths]
        masks = [read_mask(folder / "masks" / p.name).array for p in paths]
        out.append((np.stack(images, axis=-1), np.stack(masks, axis=-1)))
    return out


def all_cases(folder: Path, brats: bool = False) -> list[str]:
    """The case names of a BraTS folder (``*_patNNNN_*.nii.gz``) or of a rebuilt 2D set (``<case>_<slice>.png``)."""
    if brats:
        return sorted(p.name.split("_")[2] for p in (folder / "images").glob("*.nii.gz"))
    return sorted({p.stem.rsplit("_", 1)[0] for p in (folder / "images").glob("*.png")})


def support_for(query: str, support: list[str], cases: list[str]) -> list[str]:
    """``support`` without the query's own case, filled up to its length from the other cases in order: a
    query never sees itself among the examples."""
    out = [c for c in support if c != query]
    out += [c for c in cases if c != query and c not in out][: len(support) - len(out)]
    return out


def synthetic(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """BraTS-shaped (120, 120, 155) volumes with nested blobs labelled 1-4 over a stretch of slices."""
    rng = np.random.default_rng(seed)
    out = []
    xx, yy, zz = np.mgrid[:120, :120, :155]
    for _ in range(n):
        c = rng.uniform([40, 40, 50], [80, 80, 105])
        r = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + ((zz - c[2]) / 2.5) ** 2)
        mask = np.select([r < 6, r < 10, r < 14, r < 20], [1, 4, 3, 2], 0).astype(np.uint8)
        out.append(((rng.normal(0, 1, mask.shape) + mask).astype(np.float32), mask))
    return out


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays; NaN where the truth is empty (MONAI's ``ignore_empty``), so that a label absent
    from a case drops out of every config's mean alike instead of scoring 1 or 0 by what the config predicted."""
    as_batch = [torch.from_numpy(np.ascontiguousarray(a))[None, None].float() for a in (pred, truth)]
    return float(compute_dice(*as_batch, include_background=True, ignore_empty=True))


def _cell(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}"  # "-": the label is absent from the case


def pass_sizes(segmenter: Segmenter, pairs=((1, 16), (4, 16), (16, 16), (2, 8), (8, 8), (1, 64), (4, 1), (16, 1))):
    """Seconds per (slice, label) task of one forward pass of B tasks with S support items each (random
    inputs; a warm-up pass first): where a volume's time goes."""
    n = segmenter.size
    print("| tasks per pass B | support items S | seconds per pass | seconds per task |\n|---:|---:|---:|---:|")
    for b, s in pairs:
        q, si = torch.rand(b, 1, n, n), torch.rand(b, s, 1, n, n)
        sm = (torch.rand(b, s, 1, n, n) > 0.5).float()
        segmenter.predict_torch(q, si, sm)
        repeats = max(1, 16 // b)
        start = time.perf_counter()
        for _ in range(repeats):
            segmenter.predict_torch(q, si, sm)
        per_pass = (time.perf_counter() - start) / repeats
        print(f"| {b} | {s} | {per_pass:.2f} | {per_pass / b:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", nargs="+", default=["pat0001"], help="BraTS cases segmented")
    parser.add_argument("--support", nargs="+", default=["pat0002", "pat0003", "pat0004", "pat0005"],
                        help="cases used as support volumes; a query's own case is replaced by the first other "
                        "case that is neither a query's support nor the query")
    parser.add_argument("--configs", nargs="+", default=["old", "new"], choices=sorted(CONFIGS))
    parser.add_argument("--query-step", type=int, default=1, help="keep every k-th query slice")
    parser.add_argument("--old-step", type=int, default=1,
                        help="'old' only: run every m-th of the kept query slices and scale its seconds by the "
                        "slices kept / run (its cost is linear in slices: every slice, every label, the same S); "
                        "the 'on old's slices' Dice columns compare every config on those slices")
    parser.add_argument("--folder", type=Path, default=None,
                        help="instead of BraTS: a 2D set whose images/ and masks/ are <case>_<slice>.png, rebuilt "
                        "into one small volume per case (--queries and --support name cases)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--pass-sizes", action="store_true",
                        help="only time one forward pass per (tasks B, support items S) pair: seconds per task")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pass_sizes:
        return pass_sizes(Segmenter.from_pretrained())

    real = (BRATS / "images").is_dir() or args.folder is not None
    segmenter = Segmenter.from_pretrained()
    if real:
        load = (lambda names: load_png_volumes(args.folder, names)) if args.folder else (
            lambda names: load_brats(BRATS, names))
        queries = dict(zip(args.queries, load(args.queries)))
        cases = all_cases(args.folder) if args.folder else all_cases(BRATS, brats=True)
        supports = {name: load(support_for(name, args.support, cases)) for name in args.queries}
    else:
        queries = {"synthetic": synthetic(1, seed=2)[0]}
        supports = {"synthetic": synthetic(4, seed=1)}
    source = args.folder.name if args.folder else "BraTS " + BRATS.name if real else "synthetic (speed only)"
    print(f"data: {source}; query step {args.query_step}; torch threads {torch.get_num_threads()}")
    rows = []
    for name, (volume, truth) in queries.items():
        support = supports[name]
        prepared = segmenter.prepare_volume_support([v for v, _ in support], [m for _, m in support], axis=2)
        labels = prepared.labels
        names = support_for(name, args.support, cases) if real else ["synthetic"] * len(support)
        print(f"  {name}: support {' '.join(names)}", flush=True)
        volume, truth = volume[..., :: args.query_step], truth[..., :: args.query_step]
        sub = np.arange(0, volume.shape[2], args.old_step)  # the slices 'old' runs
        for config in args.configs:
            prepared.cache.clear()  # every configuration prepares its own support slices
            query = volume[..., sub] if config == "old" else volume
            options = dict(CONFIGS[config])
            knobs = {key: getattr(module, attr) for key, (module, attr) in KNOBS.items()}
            for key, (module, attr) in KNOBS.items():
                setattr(module, attr, options.pop(key, knobs[key]))
            plain = segmenter.predict_torch
            if options.pop("bf16", False):
                segmenter.predict_torch = bf16(segmenter)
            start = time.perf_counter()
            try:
                result = volumes.predict_with_volumes(segmenter, query, prepared, VolumeOptions(**options))
            finally:
                segmenter.predict_torch = plain
                for key, (module, attr) in KNOBS.items():
                    setattr(module, attr, knobs[key])
            seconds = time.perf_counter() - start
            scale = volume.shape[2] / query.shape[2]  # 1 but for 'old' with --old-step
            mask = np.zeros(truth.shape, result.mask.dtype)
            mask[..., sub if config == "old" else slice(None)] = result.mask
            per_label = [dice(mask == lab, truth == lab) for lab in labels]
            on_sub = [dice(mask[..., sub] == lab, truth[..., sub] == lab) for lab in labels]
            rows.append({"query": name, "config": config, "seconds": seconds * scale, "run_s": seconds,
                         "tasks": result.tasks, "skipped": len(result.skipped), "slices": result.slices,
                         "wt": dice(mask > 0, truth > 0), "labels": per_label, "mean": float(np.nanmean(per_label)),
                         "wt_sub": dice(mask[..., sub] > 0, truth[..., sub] > 0),
                         "mean_sub": float(np.nanmean(on_sub))})
            print(f"  {name} {config}: {seconds:.1f} s ({result.tasks} tasks); Dice WT {rows[-1]['wt']:.3f}, mean "
                  f"{rows[-1]['mean']:.3f}; on old's slices {rows[-1]['wt_sub']:.3f}, {rows[-1]['mean_sub']:.3f} "
                  f"(per label {' '.join(_cell(d) for d in on_sub)})", flush=True)

    head = " | ".join(f"Dice {lab}" for lab in labels)
    print(f"\n| query | config | seconds | speed-up vs old | tasks | skipped slices | Dice WT | {head} | mean Dice | "
          f"Dice WT on old's slices | mean Dice on old's slices |")
    print("|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(labels) + "---:|---:|---:|")
    for row in rows:
        old = next((r for r in rows if r["query"] == row["query"] and r["config"] == "old"), None)
        speed = f"{old['seconds'] / row['seconds']:.1f}x" if old else "-"
        cells = " | ".join(_cell(d) for d in row["labels"])
        seconds = f"{row['seconds']:.1f}"
        if row["seconds"] != row["run_s"]:
            seconds += f" ({row['run_s']:.1f} s for {row['slices']} slices)"
        dice_cells = f"{row['wt']:.3f} | {cells} | {row['mean']:.3f}"
        if args.old_step > 1 and row["config"] == "old":
            dice_cells = " | ".join(["-"] * (len(labels) + 2))  # it ran only old's slices
        print(f"| {row['query']} | {row['config']} | {seconds} | {speed} | {row['tasks']} | "
              f"{row['skipped']}/{row['slices']} | {dice_cells} | {row['wt_sub']:.3f} | {row['mean_sub']:.3f} |")

if __name__ == "__main__":
    main()

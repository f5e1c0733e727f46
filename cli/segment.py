"""`icseg segment`: segment a query file or a folder of them, here (the model in-process) or on a server (--url).

Exit codes: 0 every query segmented; 1 a failure (the model's or the server's message is printed);
2 a usage error (argparse's own, or arguments that name no usable files).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cli.common import (
    IMAGE_SUFFIXES,
    UsageError,
    add_command,
    add_segment_options,
    add_selection_options,
    check_segment_options,
    expand,
    is_image_file,
    local_volume_kwargs,
    message,
    progress_bar,
    run_reporting,
    stem,
    usage_error,
    volume_options,
)

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  # here, with local weights (or ICSEG_WEIGHTS)
  icseg segment --weights model.safetensors --support-images s1.png s2.png --support-masks m1.png m2.png \\
      --query scans/ --out masks/ --overlay
  # on a server; ICSEG_API_KEY holds its key
  icseg segment --url http://gpu-box:8000 --support-images examples/images --support-masks examples/masks \\
      --query scan.nii.gz --out masks/
  icseg segment --url http://gpu-box:8000 --prompt-id 3f2a... --query scans/ --out masks/

masks are written as OUT/<query name> in the query's format (PNG for 2D images, TIFF for TIFF, NIfTI with
the query's affine for NIfTI); --overlay adds OUT/overlays/<query name>.png; OUT/<query name>.quality.json holds
the confidence per label, low_confidence, the mismatch check and warnings (also printed); --uncertainty adds
OUT/uncertainty/ (docs/confidence.md).
exit codes: 0 ok, 1 failure (message printed), 2 usage error"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "segment",
        help="segment a query image, volume or folder with a support set or a stored prompt",
        description="Segment every label of the support set in each query. Without --url the model runs in "
        "this process; with --url a server does the work.",
        epilog=EXAMPLES,
    )
    p.add_argument("--query", required=True, metavar="PATH_OR_DIR", help="an image or volume file, or a folder of them")
    p.add_argument("--support-images", nargs="+", metavar="PATH",
                   help="example images, paired by order with --support-masks (files, or one folder: sorted)")
    p.add_argument("--support-masks", nargs="+", metavar="PATH",
                   help="their label maps: 0 background, 1..K structures (files, or one folder: sorted)")
    p.add_argument("--prompt-id", "--prompt", dest="prompt_id", metavar="ID",
                   help="with --url: a stored prompt (the API's prompt_id) instead of the support files")
    p.add_argument("--overlay", action="store_true", help="also write OUT/overlays/<name>.png: mask contours on the "
                   "query (the slice with most foreground for volumes)")
    p.add_argument("--uncertainty", action="store_true", help="also write the per-pixel uncertainty maps: "
                   "OUT/uncertainty/<name>_label<v>.png (2D) or OUT/uncertainty/<name>.nii.gz (volumes)")
    add_segment_options(p)
    add_selection_options(p)
    server = p.add_argument_group("server mode")
    server.add_argument("--url", help="the icseg server, e.g. http://gpu-box:8000 (omit: run the model here)")
    server.add_argument("--api-key", help="the server's API key; prefer the ICSEG_API_KEY environment variable "
                        "(command lines are visible to other users)")
    server.add_argument("--timeout", type=float, default=None, help="seconds to wait for one answer")
    local = p.add_argument_group("local mode")
    local.add_argument("--weights", help="weights file (default: ICSEG_WEIGHTS, then the embedded default model)")
    local.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    p.set_defaults(func=run)


@dataclass
class Plan:
    queries: list[Path]
    out: Path
    support_images: list[Path]
    support_masks: list[Path]


def run(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
    except UsageError as exc:
        return usage_error("segment", exc)
    return run_reporting("segment", lambda: _run_remote(args, plan) if args.url else _run_local(args, plan))


# -- arguments -> files --------------------------------------------------------------------------------------


def _plan(args: argparse.Namespace) -> Plan:
    query = Path(args.query)
    if query.is_dir():
        queries = sorted(p for p in query.iterdir() if is_image_file(p))
        if not queries:
            raise UsageError(f"--query: no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {query}")
    elif query.is_file():
        queries = [query]
    else:
        raise UsageError(f"--query: no such file or folder: {query}")
    images = expand(args.support_images, "--support-images")
    masks = expand(args.support_masks, "--support-masks")
    if args.prompt_id:
        if not args.url:
            raise UsageError("--prompt-id/--prompt needs --url (stored prompts live on a server)")
        if images or masks:
            raise UsageError("give either --prompt-id or --support-images/--support-masks, not both")
    elif not images or not masks:
        raise UsageError("give --support-images and --support-masks (paired by order), or --prompt-id with --url")
    elif len(images) != len(masks):
        raise UsageError(f"{len(images)} support images but {len(masks)} support masks; pair them one to one")
    check_segment_options(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is a file, not a folder")
    return Plan(queries, out, images, masks)


def _is_query_error(exc: Exception) -> bool:
    """A failure about this query only (a bad file): report it and go on with the next one."""
    return str(getattr(exc, "field", None) or "").startswith("query")


def _save_overlay(rgb, out: Path, name: str) -> None:
    from data.io import to_png_bytes, write_atomic

    write_atomic(out / "overlays" / f"{name}.png", to_png_bytes(rgb))


def _finish(failed: list[tuple[Path, str]], total: int) -> int:
    for path, text in failed:
        print(f"error: {path}: {text}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {total} queries failed", file=sys.stderr)
    return 1 if failed else 0


def _queries(plan: Plan, enabled: bool):
    return progress_bar("query", "segment", enabled and len(plan.queries) > 1, iterable=plan.queries)


# -- server mode ---------------------------------------------------------------------------------------------


def _run_remote(args: argparse.Namespace, plan: Plan) -> int:
    try:
        from icseg_client import Client
    except ImportError:
        print("error: --url needs the Python SDK: pip install -e ./client (or pip install icseg-client)",
              file=sys.stderr)
        return 1
    from cli.quality import write_quality
    from data.io import detect_format, read_image

    # the support set is read once, not once per query
    images = [p.read_bytes() for p in plan.support_images] or None
    masks = [p.read_bytes() for p in plan.support_masks] or None
    options = {"prompt_id": args.prompt_id, "threshold": args.threshold, "ensemble": args.ensemble, "axis": args.axis,
               "select": args.select, "support_size": args.support_size}
    volume = volume_options(args)
    failed: list[tuple[Path, str]] = []
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        for path in _queries(plan, args.progress):
            query = path.read_bytes()
            try:
                if detect_format(query) in ("nifti", "gzip"):
                    single = len(plan.queries) == 1 and args.progress
                    result = client.segment_volume(query, images, masks, progress=single, uncertainty=args.uncertainty,
                                                   **options, **volume)
                else:
                    result = client.segment(query, images, masks, uncertainty=args.uncertainty, **options)
            except Exception as exc:
                if not _is_query_error(exc):
                    raise
                failed.append((path, str(exc)))
                continue
            result.save(plan.out / (stem(path) + result.extension))
            if result.calibrated is not None:  # a server that says how sure it is
                volume_map = result.uncertainty is not None and result.is_volume
                decoded = read_image(path, field="query") if volume_map else None  # the geometry of its NIfTI
                write_quality(plan.out, stem(path), path, result.__dict__, result.labels, result.uncertainty, decoded)
            if args.overlay:
                _save_overlay(result.overlay(axis=args.axis), plan.out, stem(path))
    return _finish(failed, len(plan.queries))


# -- local mode ----------------------------------------------------------------------------------------------


def _run_local(args: argparse.Namespace, plan: Plan) -> int:
    from cli.quality import local_assessment, local_uncertainty, write_quality
    from data.io import encode_mask, read_image, write_atomic
    from model import retrieval
    from model.inputs import read_support
    from model.segmenter import Segmenter, VolumeSupport
    from model.support import merge_labels

    weights = args.weights or os.environ.get("ICSEG_WEIGHTS") or None
    segmenter = Segmenter.from_pretrained(weights, device=args.device)
    # the support files are read and prepared once (the service's path from bytes to a support set)
    pool = read_support(plan.support_images, plan.support_masks, volumes=True).prepare(segmenter, args.axis)
    if isinstance(pool, VolumeSupport) and (args.select not in (None, "all") or args.support_size is not None):
        raise UsageError("--select and --support-size choose among 2D support items; 3D support volumes are "
                         "matched by position: use --support-slices")
    failed: list[tuple[Path, str]] = []
    for path in _queries(plan, args.progress):
        try:
            query = read_image(path, field="query")
            support = pool
            if not isinstance(pool, VolumeSupport):  # the items this query uses (model.retrieval), as the server
                prepared = retrieval.prepare_query(query.array, segmenter.size, segmenter.clip_percentiles,
                                                   args.axis if query.kind == "volume" else None)
                support, _ = retrieval.for_query(prepared, pool, args.select, args.support_size,
                                                 segmenter.max_support, segmenter.seed)
            if query.kind == "image":
                if isinstance(support, VolumeSupport):
                    raise UsageError(f"{path} is a 2D image but the support set is 3D volumes")
                probs, spread = segmenter.predict_many([query.array], support, ensemble=args.ensemble, spread=True)[0]
                mask = merge_labels(probs, support.labels, args.threshold)
            else:
                mask, probs, spread = _local_volume(segmenter, query.array, support, args,
                                                    len(plan.queries) == 1 and args.progress)
            quality = local_assessment(segmenter, query, support, mask, probs, spread, args.axis)
        except Exception as exc:
            if not _is_query_error(exc):
                raise
            failed.append((path, message(exc)))
            continue
        payload, _, extension = encode_mask(mask, query)
        write_atomic(plan.out / (stem(path) + extension), payload)
        maps = local_uncertainty(probs, spread) if args.uncertainty else None
        write_quality(plan.out, stem(path), path, quality, list(support.labels), maps, query)
        if args.overlay:
            # overlays colour each label the same way in every query, as the server mode does
            _save_overlay(_local_overlay(query.array, mask, list(support.labels), args.axis), plan.out, stem(path))
    return _finish(failed, len(plan.queries))


def _local_volume(segmenter, volume, support, args, show: bool):
    """One volume in this process, with the SDK's bar (slices; skipped ones are its starting point): (mask, probs,
    the ensemble members' std or None)."""
    bar = progress_bar("slice", "segment_volume", show, total=volume.shape[args.axis])
    started = [False]

    def progress(done: int, total: int) -> None:
        if not started[0]:
            started[0] = True
            bar.reset(total=total)
            bar.initial = bar.n = done  # skipped slices are done at once: not part of the rate
            bar.refresh()
        elif done > bar.n:
            bar.update(done - bar.n)

    try:
        result = segmenter.predict_volume_result(volume, support=support, axis=args.axis, ensemble=args.ensemble,
                                                 threshold=args.threshold, progress=progress, probs=True,
                                                 spread=True, **local_volume_kwargs(args))
    finally:
        bar.close()
    if result.skipped:
        log.info("%d of %d slices skipped (outside the support's labelled range)", len(result.skipped),
                 result.slices)
    return result.mask, result.probs, result.spread


def _local_overlay(image, mask, labels: list[int], axis: int):
    import numpy as np

    try:
        from icseg_client import overlay
    except ImportError as exc:
        raise OSError("--overlay draws with the Python SDK: pip install -e ./client") from exc
    if mask.ndim == 3:
        index = int(np.argmax(np.moveaxis(mask != 0, axis, 0).reshape(mask.shape[axis], -1).sum(1)))
        image, mask = np.take(image, index, axis=axis), np.take(mask, index, axis=axis)
    return overlay(image, mask, labels)

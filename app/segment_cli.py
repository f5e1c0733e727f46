"""`icseg segment`: segment a query file or a folder of them, here (the model in-process) or on a server (--url).

Exit codes: 0 every query segmented; 1 a failure (the model's or the server's message is printed);
2 a usage error (argparse's own, or arguments that name no usable files).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# what a query folder is scanned for (files are still read by their content, not their name)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")

EXAMPLES = """examples:
  # here, with local weights (or ICSEG_WEIGHTS)
  icseg segment --weights model.safetensors --support-images s1.png s2.png --support-masks m1.png m2.png \\
      --query scans/ --out masks/ --overlay
  # on a server; ICSEG_API_KEY holds its key
  icseg segment --url http://gpu-box:8000 --support-images examples/images --support-masks examples/masks \\
      --query scan.nii.gz --out masks/
  icseg segment --url http://gpu-box:8000 --prompt 3f2a... --query scans/ --out masks/

masks are written as OUT/<query name> in the query's format (PNG for 2D images, TIFF for TIFF, NIfTI with
the query's affine for NIfTI); --overlay adds OUT/overlays/<query name>.png.
exit codes: 0 ok, 1 failure (message printed), 2 usage error"""


class UsageError(Exception):
    """Arguments that cannot work; exit code 2."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment a query image, volume or folder with a support set or a stored prompt",
        description="Segment every label of the support set in each query. Without --url the model runs in "
        "this process; with --url a server does the work.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--query", required=True, metavar="PATH_OR_DIR", help="an image or volume file, or a folder of them")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the masks (created if missing)")
    p.add_argument("--support-images", nargs="+", metavar="PATH",
                   help="example images, paired by order with --support-masks (files, or one folder: sorted)")
    p.add_argument("--support-masks", nargs="+", metavar="PATH",
                   help="their label maps: 0 background, 1..K structures (files, or one folder: sorted)")
    p.add_argument("--prompt", metavar="ID", help="with --url: a stored prompt instead of the support files")
    p.add_argument("--overlay", action="store_true", help="also write OUT/overlays/<name>.png: mask contours on the "
                   "query (the slice with most foreground for volumes)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability at which a pixel gets a label")
    p.add_argument("--ensemble", type=int, default=1, help="average over this many random support subsets")
    p.add_argument("--axis", type=int, choices=(0, 1, 2), default=2, help="volumes: slicing axis (2: axial for RAS)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
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


def usage_error(command: str, exc: UsageError) -> int:
    print(f"icseg {command}: error: {exc}", file=sys.stderr)
    return 2


def run_reporting(command: str, work: Callable[[], int]) -> int:
    """``work()``'s exit status; a usage error gives 2, a typed error of the SDK or the model (or an OSError)
    1, each with its message instead of a traceback."""
    try:
        return work()
    except UsageError as exc:
        return usage_error(command, exc)
    except Exception as exc:  # noqa: BLE001 - typed errors of the SDK and the model: their message is the report
        if not _is_reportable(exc):
            raise
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 1


def _is_reportable(exc: Exception) -> bool:
    names = {c.__module__.split(".")[0] for c in type(exc).__mro__}
    return bool(names & {"icseg_client", "model"}) or isinstance(exc, OSError)


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", None) if type(exc).__module__.startswith("model") else exc) or repr(exc)


# -- arguments -> files --------------------------------------------------------------------------------------


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


def _expand(paths: list[str] | None, flag: str) -> list[Path]:
    if not paths:
        return []
    if len(paths) == 1 and Path(paths[0]).is_dir():
        files = sorted(p for p in Path(paths[0]).iterdir() if _is_image_file(p))
        if not files:
            raise UsageError(f"{flag}: no image files in folder {paths[0]}")
        return files
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UsageError(f"{flag}: not a file: {missing[0]}")
    return [Path(p) for p in paths]


def _plan(args: argparse.Namespace) -> Plan:
    query = Path(args.query)
    if query.is_dir():
        queries = sorted(p for p in query.iterdir() if _is_image_file(p))
        if not queries:
            raise UsageError(f"--query: no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {query}")
    elif query.is_file():
        queries = [query]
    else:
        raise UsageError(f"--query: no such file or folder: {query}")
    images = _expand(args.support_images, "--support-images")
    masks = _expand(args.support_masks, "--support-masks")
    if args.prompt:
        if not args.url:
            raise UsageError("--prompt needs --url (stored prompts live on a server)")
        if images or masks:
            raise UsageError("give either --prompt or --support-images/--support-masks, not both")
    elif not images or not masks:
        raise UsageError("give --support-images and --support-masks (paired by order), or --prompt with --url")
    elif len(images) != len(masks):
        raise UsageError(f"{len(images)} support images but {len(masks)} support masks; pair them one to one")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    if args.ensemble < 1:
        raise UsageError("--ensemble must be 1 or more")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is a file, not a folder")
    return Plan(queries, out, images, masks)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _progress(items: list[Path], enabled: bool):
    from tqdm import tqdm

    return tqdm(items, unit="query", desc="segment", disable=not enabled or len(items) < 2, file=sys.stderr)


def _is_query_error(exc: Exception) -> bool:
    """A failure about this query only (a bad file): report it and go on with the next one."""
    return str(getattr(exc, "field", None) or "").startswith("query")


def _save_overlay(rgb, out: Path, stem: str) -> None:
    from PIL import Image

    (out / "overlays").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(out / "overlays" / f"{stem}.png")


def _finish(failed: list[tuple[Path, str]], total: int) -> int:
    for path, message in failed:
        print(f"error: {path}: {message}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {total} queries failed", file=sys.stderr)
    return 1 if failed else 0


# -- server mode ---------------------------------------------------------------------------------------------


def _run_remote(args: argparse.Namespace, plan: Plan) -> int:
    try:
        from icseg_client import Client
        from icseg_client._inputs import detect_format
    except ImportError:
        print("error: --url needs the Python SDK: pip install -e ./client (or pip install icseg-client)",
              file=sys.stderr)
        return 1
    # the support set is read once, not once per query
    images = [p.read_bytes() for p in plan.support_images] or None
    masks = [p.read_bytes() for p in plan.support_masks] or None
    failed: list[tuple[Path, str]] = []
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        for path in _progress(plan.queries, args.progress):
            query = path.read_bytes()
            try:
                if detect_format(query) in ("nifti", "gzip"):
                    single = len(plan.queries) == 1 and args.progress
                    result = client.segment_volume(query, images, masks, prompt=args.prompt, threshold=args.threshold,
                                                   ensemble=args.ensemble, axis=args.axis, progress=single)
                else:
                    result = client.segment(query, images, masks, prompt=args.prompt, threshold=args.threshold,
                                            ensemble=args.ensemble, axis=args.axis)
            except Exception as exc:
                if not _is_query_error(exc):
                    raise
                failed.append((path, str(exc)))
                continue
            result.save(plan.out / (_stem(path) + result.extension))
            if args.overlay:
                _save_overlay(result.overlay(axis=args.axis), plan.out, _stem(path))
    return _finish(failed, len(plan.queries))


# -- local mode ----------------------------------------------------------------------------------------------


def _as_2d(array, field: str):
    """A 2D support item from an image, or from a NIfTI slice with a singleton axis."""
    from model.errors import InputError

    if array.ndim == 3 and 1 in array.shape:
        return array.squeeze(axis=array.shape.index(1))
    if array.ndim == 3 and array.shape[-1] not in (3, 4):
        raise InputError(f"{field} is a 3D volume {array.shape}; 2D queries need 2D support images", field=field)
    return array


def _run_local(args: argparse.Namespace, plan: Plan) -> int:
    import numpy as np

    from data.io import encode_mask, read_image
    from model.segmenter import Segmenter

    weights = args.weights or os.environ.get("ICSEG_WEIGHTS") or None
    segmenter = Segmenter.from_pretrained(weights, device=args.device)
    support, images, masks = _read_support(segmenter, plan.support_images, plan.support_masks)
    # overlays colour each label the same way in every query, as the server mode does
    labels = list(support.labels) if support is not None else sorted(
        {int(v) for m in masks for v in np.unique(m.array) if v != 0})
    failed: list[tuple[Path, str]] = []
    for path in _progress(plan.queries, args.progress):
        try:
            query = read_image(path, field="query")
            if query.kind == "image":
                if support is None:
                    raise UsageError(f"{path} is a 2D image but the support set is 3D volumes")
                mask = segmenter.predict(query.array, support=support, ensemble=args.ensemble,
                                         threshold=args.threshold)
            elif support is None:
                mask = segmenter.predict_volume(query.array, [im.array for im in images], [m.array for m in masks],
                                                axis=args.axis, ensemble=args.ensemble, threshold=args.threshold)
            else:
                mask = _volume_with_support(segmenter, query.array, support, args)
        except Exception as exc:
            if not _is_query_error(exc):
                raise
            failed.append((path, _message(exc)))
            continue
        payload, _, extension = encode_mask(mask, query)
        plan.out.mkdir(parents=True, exist_ok=True)
        (plan.out / (_stem(path) + extension)).write_bytes(payload)
        if args.overlay:
            _save_overlay(_local_overlay(query.array, mask, labels, args.axis), plan.out, _stem(path))
    return _finish(failed, len(plan.queries))


def _read_support(segmenter, image_paths: list[Path], mask_paths: list[Path]):
    """The support files, read once: (2D PreparedSupport, or None for 3D volumes; images; masks as ImageData)."""
    from data.io import read_image, read_mask

    images = [read_image(p, field=f"support_images[{i}]") for i, p in enumerate(image_paths)]
    masks = [read_mask(p, field=f"support_masks[{i}]") for i, p in enumerate(mask_paths)]
    volumes = [im.kind == "volume" and 1 not in im.array.shape for im in images]
    support = None
    if not any(volumes):
        support = segmenter.prepare_support(
            [_as_2d(im.array, f"support_images[{i}]") for i, im in enumerate(images)],
            [_as_2d(m.array, f"support_masks[{i}]") for i, m in enumerate(masks)],
        )
    elif not all(volumes):
        raise UsageError("mix of 3D and 2D support items: give only NIfTI volumes or only 2D images")
    return support, images, masks


def _volume_with_support(segmenter, volume, support, args):
    """Every slice along ``args.axis`` segmented with one 2D support set, in chunks (bounded memory)."""
    import numpy as np

    from model.segmenter import merge_labels

    slices = np.moveaxis(np.asarray(volume), args.axis, 0)  # (D, H, W)
    out = np.zeros(slices.shape, dtype=np.uint8 if max(support.labels) <= 255 else np.uint16)
    for first in range(0, len(slices), 32):
        chunk = list(slices[first:first + 32])
        probs = segmenter.predict_many(chunk, support, ensemble=args.ensemble)  # K x (H, W) per slice
        out[first:first + len(chunk)] = merge_labels(np.stack(probs, axis=1), support.labels, args.threshold)
    return np.moveaxis(out, 0, args.axis)


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

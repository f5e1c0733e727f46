"""`icseg batch`: one support set over a folder or manifest of images and volumes, on Ray.

The driver (this process) plans the run, skips inputs whose mask is already complete, prepares the support set
once and puts it in Ray's object store; a pool of model-holding actors (Ray Data ``map_batches``,
``cli/batch_ray.py``) reads each input, segments it and writes its mask atomically. Without ``--address`` a
local Ray is started on this machine: the same code path as on a cluster.

Ray is an optional extra (``pip install -e '.[batch]'``) imported only in ``cli/batch_ray.py``, inside the
command, never by the rest of the product. Exit codes: 0 every input segmented or skipped; 1 an input failed
(listed in the summary CSV), Ray is missing, or the model could not load; 2 a usage error.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
import time
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
    run_reporting,
    stem,
    usage_error,
)

log = logging.getLogger(__name__)

SUMMARY_FIELDS = ("input", "output", "status", "seconds", "error")

EXAMPLES = """examples:
  # a local Ray on this machine, two model replicas
  icseg batch --weights model.safetensors --prompt-dir prompt/ --inputs scans/ --out masks/ --replicas 2
  # an existing cluster: 8 replicas sharing 4 GPUs; paths must be visible to every node
  icseg batch --address auto --prompt-dir /shared/prompt --inputs /shared/list.txt --out /shared/masks \\
      --replicas 8 --gpus-per-replica 0.5 --batch-size 16

--prompt-dir holds images/ and masks/ (2D support items paired by sorted order, as in `icseg segment`).
--inputs is a folder (scanned for image and NIfTI files) or a manifest: one path per line, relative to the
manifest's folder, '#' starts a comment. Masks are written as OUT/<input name> in the input's format and
geometry; a rerun skips inputs whose mask is already complete. The summary CSV (default
OUT/batch-summary.csv) has one row per input: input, output, status (ok, skipped, failed), seconds, error.
exit codes: 0 ok, 1 an input failed (see the CSV) or a setup failure, 2 usage error"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "batch",
        help="segment many images/volumes with one support set on Ray (local or an existing cluster)",
        description="Segment every input with one support set through a pool of model replicas on Ray. "
        "Needs the batch extra: pip install -e '.[batch]'.",
        epilog=EXAMPLES,
    )
    p.add_argument("--prompt-dir", required=True, metavar="DIR", help="support set: DIR/images and DIR/masks")
    p.add_argument("--inputs", required=True, metavar="MANIFEST_OR_DIR", help="a folder of inputs or a manifest")
    p.add_argument("--summary", metavar="CSV", help="summary file (default: OUT/batch-summary.csv)")
    p.add_argument("--weights", help="weights file (default: ICSEG_WEIGHTS, then the embedded default model); "
                   "on a cluster it must exist at this path on every node")
    add_segment_options(p)
    add_selection_options(p)
    ray_group = p.add_argument_group("Ray")
    ray_group.add_argument("--address", help="an existing cluster: 'auto' (this node's) or ray://HOST:10001; "
                           "omit to start a local Ray on this machine")
    ray_group.add_argument("--replicas", type=int, default=1, help="model-holding actors (default 1)")
    ray_group.add_argument("--gpus-per-replica", type=float, default=0.0,
                           help="GPUs per actor, fractions share a GPU (default 0: CPU)")
    ray_group.add_argument("--cpus-per-replica", type=float, default=1.0,
                           help="CPUs per actor; also its torch threads (default 1)")
    ray_group.add_argument("--batch-size", type=int, default=8, help="inputs per actor call (default 8)")
    p.add_argument("--retry-failed", action="store_true",
                   help="retry inputs that failed in the previous run even if unchanged since (default: keep them "
                   "as failed without work)")
    p.set_defaults(func=run)


@dataclass
class Item:
    input: Path
    output: Path


@dataclass
class Plan:
    items: list[Item]
    support_images: list[Path]
    support_masks: list[Path]
    out: Path
    summary: Path


def run(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
    except UsageError as exc:
        return usage_error("batch", exc)
    from cli import batch_ray

    ray = batch_ray.import_ray()
    if ray is None:
        return 1
    return run_reporting("batch", lambda: _run(args, plan, ray))


# -- arguments -> files --------------------------------------------------------------------------------------


def _plan(args: argparse.Namespace) -> Plan:
    prompt = Path(args.prompt_dir)
    if not (prompt / "images").is_dir() or not (prompt / "masks").is_dir():
        raise UsageError(f"--prompt-dir: {prompt} must hold the folders images/ and masks/")
    images = expand([str(prompt / "images")], "--prompt-dir images/")
    masks = expand([str(prompt / "masks")], "--prompt-dir masks/")
    if len(images) != len(masks):
        raise UsageError(f"--prompt-dir: {len(images)} images but {len(masks)} masks; pair them one to one")
    for flag, value in (("--replicas", args.replicas), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be 1 or more")
    check_segment_options(args)
    if args.gpus_per_replica < 0 or args.cpus_per_replica <= 0:
        raise UsageError("--gpus-per-replica must be 0 or more and --cpus-per-replica more than 0")
    out = Path(args.out).resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is a file, not a folder")
    inputs = _inputs(Path(args.inputs))
    items, seen = [], {}
    for path in inputs:
        output = out / (stem(path) + _mask_extension(path))
        if output in seen:
            raise UsageError(f"{seen[output]} and {path} would both write {output}; rename one")
        seen[output] = path
        items.append(Item(path, output))
    summary = Path(args.summary).resolve() if args.summary else out / "batch-summary.csv"
    return Plan(items, images, masks, out, summary)


def _inputs(source: Path) -> list[Path]:
    """Absolute input paths (actors may run elsewhere) from a folder, a manifest, or one image file."""
    if source.is_dir():
        found = sorted(p.resolve() for p in source.iterdir() if is_image_file(p))
        if not found:
            raise UsageError(f"--inputs: no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {source}")
        return found
    if not source.is_file():
        raise UsageError(f"--inputs: no such file or folder: {source}")
    if is_image_file(source) and _sniff(source) is not None:
        return [source.resolve()]
    try:
        lines = source.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--inputs: {source} is neither an image nor a text manifest ({exc})") from exc
    # a listed file that is missing is a failed input in the summary, not a usage error: archives have holes
    found = [(source.parent / line.strip()).resolve() for line in lines if line.strip() and not line.startswith("#")]
    if not found:
        raise UsageError(f"--inputs: the manifest {source} lists no files (one path per line)")
    return found


def _sniff(path: Path) -> str | None:
    from data.io import detect_format

    try:
        with open(path, "rb") as f:
            return detect_format(f.read(540))
    except OSError:
        return None


def _mask_extension(path: Path) -> str:
    """The extension ``encode_mask`` will give this input's mask, from the file's leading bytes."""
    fmt = _sniff(path)
    return ".nii.gz" if fmt in ("nifti", "gzip") else ".tif" if fmt == "tiff" else ".png"


def _is_complete(path: Path) -> bool:
    """A mask from an earlier run that decodes to the end (writes are atomic; this also catches foreign files)."""
    from data.errors import InputError
    from data.io import read_mask

    if not path.is_file():
        return False
    try:
        read_mask(path, field="mask")
    except InputError:
        return False
    return True


# -- the run -------------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, plan: Plan, ray) -> int:
    from cli import batch_ray
    from model import retrieval
    from model.inputs import read_support
    from model.segmenter import Segmenter

    weights = args.weights or os.environ.get("ICSEG_WEIGHTS") or None
    weights = str(Path(weights).expanduser().resolve()) if weights else None
    # the driver loads the model only to learn its preprocessing (size, limits) and to fail early on bad weights
    segmenter = Segmenter.from_pretrained(weights, device="cpu")
    files = read_support(plan.support_images, plan.support_masks, volumes=True)
    if files.volumes:
        raise UsageError("--prompt-dir holds 3D volumes; icseg batch takes 2D support items (use `icseg segment` "
                         "for position-matched volume support)")
    support = files.prepare(segmenter)
    # the defaults filled in and checked once here (a bad --support-size fails the run, not every input); the
    # actors pick each input's items with these values (``_selector``)
    args.select, args.support_size = retrieval.resolve(args.select, args.support_size, support.size,
                                                       segmenter.max_support, retrieval.LARGE_DEFAULT)
    rows = {item.input: _row(item, "pending") for item in plan.items}
    earlier = {} if args.retry_failed else _earlier_failures(plan.summary)
    todo, kept = [], 0
    for item in plan.items:
        if _is_complete(item.output):
            rows[item.input] = _row(item, "skipped")
        elif item.input in earlier and earlier[item.input]["output"] == str(item.output):
            rows[item.input] = earlier[item.input] | {"seconds": 0.0}
            kept += 1
        else:
            todo.append(item)
    if kept:
        print(f"{kept} input(s) failed in an earlier run and are unchanged since: not retried (--retry-failed "
              "retries them)", file=sys.stderr)
    replicas: set[str] = set()
    started = time.perf_counter()
    try:
        if todo:
            for result in batch_ray._segment_on_ray(ray, args, plan, todo, support.to_arrays(), weights):
                replicas.add(result.pop("replica"))
                rows[Path(result["input"])] = result
    finally:
        elapsed = time.perf_counter() - started
        _write_summary(plan.summary, [rows[item.input] for item in plan.items])
    used = f"support: {args.select}, {args.support_size} of {support.size} items per input"
    return _report(list(rows.values()), elapsed, len(replicas), plan.summary, used)


def _earlier_failures(summary: Path) -> dict[Path, dict]:
    """Rows of an earlier run's summary that failed on an input not modified since (or still missing)."""
    try:
        since = summary.stat().st_mtime
        with open(summary, newline="") as f:
            rows = [row for row in csv.DictReader(f) if row.get("status") == "failed"]
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    unchanged = {}
    for row in rows:
        path = Path(row["input"])
        try:
            if path.stat().st_mtime > since:
                continue
        except OSError:
            pass  # still missing: as failed as before
        unchanged[path] = {key: row.get(key, "") for key in SUMMARY_FIELDS}
    return unchanged


def _row(item: Item, status: str, seconds: float = 0.0, error: str = "") -> dict:
    return {"input": str(item.input), "output": str(item.output), "status": status, "seconds": round(seconds, 3),
            "error": error}


def segment_items(segmenter, support, items: list[Item], options) -> list[dict]:
    """Read, segment and write each input; a failing input gives a "failed" row and the others go on.

    Each input uses the support items ``options.select`` and ``options.support_size`` pick for it
    (``_selector``); the 2D images of the call that use the same items share one ``predict_many`` (the
    network batches them; a bad one is retried alone, ``model.segmenter.predict_each``); volumes go slice by
    slice (``Segmenter.predict_volume``). ``seconds`` is each input's read + write time plus its share of the
    batched prediction.
    """
    from data.io import read_image

    rows: dict[int, dict] = {}
    groups: dict[int, tuple] = {}  # id of the support items used -> (those items, [(index, query, seconds so far)])
    select_for = _selector(segmenter, support, options)
    for index, item in enumerate(items):
        began = time.perf_counter()
        try:
            query = read_image(item.input, field="query")
            used = select_for(query)
            if query.kind == "image":
                groups.setdefault(id(used), (used, []))[1].append((index, query, time.perf_counter() - began))
                continue
            mask = segmenter.predict_volume(query.array, support=used, axis=options.axis,
                                            ensemble=options.ensemble, threshold=options.threshold,
                                            **local_volume_kwargs(options))
            rows[index] = _row(item, "ok", error="")
            rows[index]["output"] = str(_write_mask(mask, query, item.output))
        except Exception as exc:  # noqa: BLE001 - any failure of one input is that input's row
            rows[index] = _row(item, "failed", error=message(exc))
        rows[index]["seconds"] = round(time.perf_counter() - began, 3)
    for used, images in groups.values():
        _segment_images(segmenter, used, images, items, options, rows)
    return [rows[i] for i in range(len(items))]


def _segment_images(segmenter, support, images: list[tuple], items: list[Item], options, rows: dict) -> None:
    """2D ``images`` [(index, query, seconds so far)] that use the same ``support`` items, in one ``predict_many``;
    fills their ``rows``."""
    from model.segmenter import merge_labels, predict_each

    began = time.perf_counter()
    probs = predict_each(lambda queries: segmenter.predict_many(queries, support, ensemble=options.ensemble),
                         [query.array for _, query, _ in images], retry_on=Exception)
    share = (time.perf_counter() - began) / len(images)
    for (index, query, seconds), result in zip(images, probs):
        item, began = items[index], time.perf_counter()
        try:
            if isinstance(result, Exception):
                raise result
            rows[index] = _row(item, "ok")
            mask = merge_labels(result, support.labels, options.threshold)
            rows[index]["output"] = str(_write_mask(mask, query, item.output))
        except Exception as exc:  # noqa: BLE001
            rows[index] = _row(item, "failed", error=message(exc))
        rows[index]["seconds"] = round(seconds + share + time.perf_counter() - began, 3)


def _selector(segmenter, support, options):
    """query (``ImageData``) -> the support items it uses, picked by ``model.retrieval`` as `icseg segment` and
    the server pick them; queries that use the same items get the same object (their images share a batch).

    Args:
        support: the whole prepared support set (S items).
        options: ``select`` and ``support_size`` (None or absent: the defaults), ``axis`` (volumes).
    """
    from model import retrieval

    select, k = retrieval.resolve(getattr(options, "select", None), getattr(options, "support_size", None),
                                  support.size, segmenter.max_support, retrieval.LARGE_DEFAULT)
    if select == "all" or k >= support.size:
        return lambda query: support
    embeddings = retrieval.embed(support.images) if select == "similar" else None  # once, not once per query
    subsets: dict[tuple[int, ...], object] = {}

    def select_for(query):
        prepared = retrieval.prepare_query(query.array, segmenter.size, segmenter.clip_percentiles,
                                           options.axis if query.kind == "volume" else None)
        indices = retrieval.choose(prepared, support, k, select, segmenter.seed, embeddings)
        key = tuple(indices.tolist())
        if key not in subsets:
            subsets[key] = retrieval.subset(support, indices)
        return subsets[key]

    return select_for


def _write_mask(mask, query, output: Path) -> Path:
    """The mask in the query's format and geometry, written atomically: a rerun never sees half a file."""
    from data.io import encode_mask, write_atomic

    payload, _, extension = encode_mask(mask, query)
    if not output.name.endswith(extension):  # the driver guessed from the leading bytes; the decoder decides
        output = output.with_name(stem(output) + extension)
    return write_atomic(output, payload)


# -- the report ----------------------------------------------------------------------------------------------


def _write_summary(path: Path, rows: list[dict]) -> None:
    from data.io import write_atomic

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue().encode())


def _report(rows: list[dict], elapsed: float, replicas: int, summary: Path, used: str) -> int:
    counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "skipped", "failed", "pending")}
    failed = [r for r in rows if r["status"] == "failed"]
    for row in failed[:10]:
        print(f"error: {row['input']}: {row['error']}", file=sys.stderr)
    if len(failed) > 10:
        print(f"... and {len(failed) - 10} more failures", file=sys.stderr)
    rate = counts["ok"] / elapsed if elapsed > 0 else 0.0
    pending = f", {counts['pending']} not run" if counts["pending"] else ""
    on = f"{replicas} replica" + "s" * (replicas != 1)
    print(f"batch: {counts['ok']} segmented, {counts['skipped']} skipped, {counts['failed']} failed{pending} "
          f"of {len(rows)} inputs in {elapsed:.1f} s ({rate:.2f} inputs/s on {on}); {used}; summary {summary}")
    return 1 if failed or counts["pending"] else 0

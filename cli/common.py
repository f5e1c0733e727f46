"""What the commands share: usage errors (exit 2), reported failures (exit 1), the files named by arguments.

Printing is the command line's job: messages go to stderr, results (ids, tables, summaries) to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from data.errors import CodedError

# what a folder is scanned for (files are still read by their content, not their name)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")


class UsageError(Exception):
    """Arguments that cannot work; exit code 2."""


def add_command(subparsers, name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A subcommand whose epilog (examples, settings) keeps its own line breaks."""
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_segment_options(parser) -> None:
    """What `icseg segment` and `icseg batch` share: the output folder, the segmentation options of the API's
    form, the progress bar."""
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the masks (created if missing)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability at which a pixel gets a label")
    parser.add_argument("--ensemble", type=int, default=1, help="average over this many random support subsets")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=2,
                        help="volumes: slicing axis (2: axial for RAS)")
    volumes = parser.add_argument_group("volumes with 3D support (the API's fields of the same names)")
    volumes.add_argument("--support-slices", type=int, default=None, metavar="N",
                         help="support slices per query slice and label, in all, spread over the support volumes "
                         "by position (default 8); the cost grows with it")
    volumes.add_argument("--skip-margin", type=float, default=None, metavar="M",
                         help="skip query slices farther than this relative depth (0-1) outside every support "
                         "volume's labelled range; they are background (default 0.1; 1 never skips)")
    volumes.add_argument("--cascade", action=argparse.BooleanOptionalAction, default=None,
                         help="confident predictions of neighbouring slices join the support of the next ones "
                         "(in-context cascade; default off)")
    volumes.add_argument("--support-positions", type=float, nargs="+", default=None, metavar="P",
                         help="volumes with a 2D support set: each support pair's relative depth along the axis "
                         "(0 first slice, 1 last), one per pair in order; query slices farther than --skip-margin "
                         "from the pairs holding a label are skipped (background)")


def add_selection_options(parser) -> None:
    """What `icseg segment` and `icseg batch` share for 2D support sets larger than the model takes at once:
    --select and --support-size, the API's ``select`` and ``support_size`` (``model.retrieval``)."""
    support = parser.add_argument_group("2D support sets larger than the model takes at once (the API's fields)")
    support.add_argument("--select", choices=("all", "similar", "random"), default=None,
                         help="which support items each query uses: all (the default while the set fits the model), "
                         "similar (the --support-size items nearest to the query; the default for a larger set), "
                         "random (seeded)")
    support.add_argument("--support-size", type=int, default=None, metavar="K",
                         help="how many support items each query uses (with --select similar or random)")


def check_segment_options(args) -> None:
    """Raises UsageError for a --threshold outside [0, 1], an --ensemble, --support-slices or --support-size
    below 1, a --skip-margin or a --support-positions value outside [0, 1]."""
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    if args.ensemble < 1:
        raise UsageError("--ensemble must be 1 or more")
    if getattr(args, "support_slices", None) is not None and args.support_slices < 1:
        raise UsageError("--support-slices must be 1 or more")
    if getattr(args, "support_size", None) is not None and args.support_size < 1:
        raise UsageError("--support-size must be 1 or more")
    if getattr(args, "skip_margin", None) is not None and not 0.0 <= args.skip_margin <= 1.0:
        raise UsageError("--skip-margin must be between 0 and 1 (relative depth; 1 never skips)")
    if any(not 0.0 <= p <= 1.0 for p in getattr(args, "support_positions", None) or ()):
        raise UsageError("--support-positions must be relative depths between 0 (first slice) and 1 (last)")


def volume_options(args) -> dict:
    """The cost options of a volume as keyword arguments, named as in the API and the SDK (None: defaults)."""
    return {name: getattr(args, name, None) for name in ("support_slices", "skip_margin", "cascade",
                                                        "support_positions")}


def local_volume_kwargs(args) -> dict:
    """``volume_options`` for ``Segmenter.predict_volume_result``: unset options keep its defaults, and a
    margin of 1 (never skip) is its None."""
    kwargs = {k: v for k, v in volume_options(args).items() if v is not None}
    if kwargs.get("skip_margin") is not None and kwargs["skip_margin"] >= 1:
        kwargs["skip_margin"] = None
    return kwargs


def usage_error(command: str, exc: UsageError) -> int:
    print(f"icseg {command}: error: {exc}", file=sys.stderr)
    return 2


def run_reporting(command: str, work: Callable[[], int]) -> int:
    """``work()``'s exit status; a usage error gives 2, a typed error of the SDK, the model or the decoders
    (or an OSError) 1, each with its message instead of a traceback."""
    try:
        return work()
    except UsageError as exc:
        return usage_error(command, exc)
    except Exception as exc:  # noqa: BLE001 - typed errors: their message is the report
        if not reportable(exc):
            raise
        print(f"error: {message(exc)}", file=sys.stderr)
        return 1


def reportable(exc: BaseException) -> bool:
    """An error whose message is the whole report: coded errors, the SDK's errors, OSError."""
    if isinstance(exc, CodedError | OSError):
        return True
    sdk = sys.modules.get("icseg_client")  # only a command that talks to a server imported it
    return sdk is not None and isinstance(exc, sdk.IcsegError)


def message(exc: BaseException) -> str:
    return str(exc) or repr(exc)


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


def expand(paths: list[str] | None, flag: str) -> list[Path]:
    """Files named by ``flag``: the files themselves, or the image files of one folder, sorted."""
    if not paths:
        return []
    if len(paths) == 1 and Path(paths[0]).is_dir():
        files = sorted(p for p in Path(paths[0]).iterdir() if is_image_file(p))
        if not files:
            raise UsageError(f"{flag}: no image files in folder {paths[0]}")
        return files
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UsageError(f"{flag}: not a file: {missing[0]}")
    return [Path(p) for p in paths]


def stem(path: Path) -> str:
    """The name without its image suffix (``scan.v1.nii.gz`` -> ``scan.v1``)."""
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def progress_bar(unit: str, desc: str, enabled: bool, iterable=None, total: int | None = None):
    """A tqdm bar on stderr over ``iterable`` (or counting to ``total``); off with --no-progress."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, unit=unit, desc=desc, disable=not enabled, file=sys.stderr)

"""The `icseg` command line. Each subcommand lives in its own module exposing ``register(subparsers)``;
the module is imported only to build the parser, heavy imports happen inside the command."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# one module per subcommand group; each defines register(subparsers) and sets a `func` default
COMMAND_MODULES = ["cli.train", "cli.evaluate", "cli.serve", "cli.segment", "cli.prompt", "cli.batch"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icseg", description="In-context medical image segmentation")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`icseg prompt create|list|delete`: stored support sets on a server, through the Python SDK.

Exit codes: 0 ok; 1 a failure (the server's message is printed); 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from cli.common import UsageError, expand, run_reporting


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prompt",
        help="store, list and delete support sets (prompts) on a server",
        description="A prompt is a support set stored on the server once; `icseg segment --prompt-id ID` and "
        "the SDK's segment(query, prompt_id=...) then send only the query.",
    )
    sub = p.add_subparsers(dest="prompt_command", required=True, metavar="{create,list,delete}")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", help="the icseg server (default: ICSEG_URL, then http://127.0.0.1:8000)")
        parser.add_argument("--api-key", help="the server's API key; prefer the ICSEG_API_KEY environment variable")
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    create = sub.add_parser("create", help="store a support set; prints its id",
                            description="Store a support set; prints the new prompt's id on stdout.")
    create.add_argument("--support-images", nargs="+", required=True, metavar="PATH",
                        help="2D example images, paired by order with --support-masks (files, or one folder)")
    create.add_argument("--support-masks", nargs="+", required=True, metavar="PATH",
                        help="their label maps: 0 background, 1..K (files, or one folder)")
    create.add_argument("--name", help="a display name")
    create.add_argument("--label-name", action="append", default=[], metavar="LABEL=NAME",
                        help="name a label, e.g. --label-name 1=liver (repeat for more)")
    common(create)
    create.set_defaults(func=_create)

    listing = sub.add_parser("list", help="list stored prompts")
    common(listing)
    listing.set_defaults(func=_list)

    delete = sub.add_parser("delete", help="delete stored prompts")
    delete.add_argument("ids", nargs="+", metavar="ID", help="prompt ids")
    common(delete)
    delete.set_defaults(func=_delete)


def _run(args: argparse.Namespace, action) -> int:
    try:
        from icseg_client import Client
    except ImportError:
        print("error: icseg prompt needs the Python SDK: pip install -e ./client", file=sys.stderr)
        return 1

    def work() -> int:
        with Client(args.url, api_key=args.api_key) as client:
            return action(client)

    return run_reporting("prompt", work)


def _label_names(pairs: list[str]) -> dict[int, str]:
    names = {}
    for pair in pairs:
        label, sep, name = pair.partition("=")
        if not sep or not label.strip().isdigit() or not name.strip():
            raise UsageError(f"--label-name {pair!r}: write LABEL=NAME, e.g. 1=liver")
        names[int(label)] = name.strip()
    return names


def _create(args: argparse.Namespace) -> int:
    def action(client) -> int:
        images = expand(args.support_images, "--support-images")
        masks = expand(args.support_masks, "--support-masks")
        if len(images) != len(masks):
            raise UsageError(f"{len(images)} support images but {len(masks)} support masks; pair them one to one")
        prompt = client.create_prompt(images, masks, name=args.name, label_names=_label_names(args.label_name))
        print(json.dumps(_as_json(prompt)) if args.json else prompt.id)
        return 0

    return _run(args, action)


def _list(args: argparse.Namespace) -> int:
    def action(client) -> int:
        prompts = client.list_prompts()
        if args.json:
            print(json.dumps([_as_json(p) for p in prompts], indent=2))
            return 0
        print(f"{'ID':32}  {'NAME':20}  {'LABELS':12}  {'S':>3}  {'CREATED':16}  EXPIRES")
        for p in prompts:
            labels = ",".join(f"{v}:{p.label_names[v]}" if v in p.label_names else str(v) for v in p.labels)
            print(f"{p.id:32}  {(p.name or '-')[:20]:20}  {labels[:12]:12}  {p.support_size:>3}  "
                  f"{_when(p.created_at):16}  {_when(p.expires_at) if p.expires_at else 'never'}")
        return 0

    return _run(args, action)


def _delete(args: argparse.Namespace) -> int:
    def action(client) -> int:
        for prompt_id in args.ids:
            client.delete_prompt(prompt_id)
            if not args.json:
                print(f"deleted {prompt_id}")
        if args.json:
            print(json.dumps({"deleted": args.ids}))
        return 0

    return _run(args, action)


def _as_json(prompt) -> dict:
    return {"id": prompt.id, "name": prompt.name, "labels": prompt.labels,
            "label_names": {str(k): v for k, v in prompt.label_names.items()}, "support_size": prompt.support_size,
            "network_size": prompt.network_size, "created_at": prompt.created_at, "expires_at": prompt.expires_at,
            "bytes": prompt.bytes}


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "-"


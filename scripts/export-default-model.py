"""Copy a training run's weights into the embedded default model, with its card in the metadata.

    python scripts/export-default-model.py runs/default
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.weights import DEFAULT_CARD, DEFAULT_WEIGHTS, load_model, read_metadata, save_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    args = p.parse_args()
    source = args.run_dir / "model.safetensors"
    meta = read_metadata(source)
    net = load_model(source, channels_last=False)
    train = json.loads(meta.get("train_config", "{}"))
    card = {
        **DEFAULT_CARD,
        "steps": meta.get("steps", ""),
        "train_hours": meta.get("train_hours", ""),
        "validation_datasets": ",".join(train.get("exclude", [])),
        "model_card": "docs/model-card.md",
    }
    save_checkpoint(net, args.out, card)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) from {source} at step {card['steps']}")


if __name__ == "__main__":
    main()

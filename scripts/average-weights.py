"""Average the weights of checkpoints of one lineage (a uniform "model soup") into one checkpoint.

    python scripts/average-weights.py model/weights/icseg-default.safetensors runs/gen3-decay5/model.safetensors \
        --out runs/soup-d3-d5/model.safetensors

The inputs must share the network config (same shape, same keys). Averaging only makes sense for checkpoints
that descend from the same training trajectory (here: decay branches of one stable phase); validate the result
with `icseg eval` like any other checkpoint. The output's metadata keeps the first input's training record and
names every input under `averaged_from`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.optim.swa_utils import AveragedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.weights import load_model, read_metadata, save_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", type=Path, nargs="+", help="two or more icseg .safetensors checkpoints")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if len(args.inputs) < 2:
        raise SystemExit("give at least two checkpoints to average")
    nets = [load_model(path, channels_last=False) for path in args.inputs]
    if any(n.config != nets[0].config for n in nets[1:]):
        raise SystemExit("the checkpoints have different network configs")
    soup = AveragedModel(nets[0], use_buffers=True)  # the default averaging is the equal-weight running mean
    for net in nets:
        soup.update_parameters(net)
    meta = {k: v for k, v in read_metadata(args.inputs[0]).items() if k not in ("config", "format")}
    meta["averaged_from"] = [str(path) for path in args.inputs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(soup.module, args.out, meta)
    print(f"wrote {args.out}: the mean of {len(args.inputs)} checkpoints")


if __name__ == "__main__":
    main()

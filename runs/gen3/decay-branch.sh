#!/usr/bin/env bash
# Start or resume a WSD decay branch of runs/gen3's stable phase (docs/model-card.md):
#   runs/gen3/decay-branch.sh runs/gen3-decayN DECAY_STEPS
# The first call copies gen3's resume state into the branch and records the branch's end (gen3's step + DECAY_STEPS)
# in its branch.env; later calls resume exactly from the branch's own state towards the same end. runs/gen3 itself
# stays in its stable phase, so it can be extended and branched again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
dir="${1:?usage: decay-branch.sh RUN_DIR DECAY_STEPS}"
decay="${2:?usage: decay-branch.sh RUN_DIR DECAY_STEPS}"
shift 2
if [ ! -f "$dir/last.pt" ]; then
  mkdir -p "$dir"
  cp runs/gen3/last.pt runs/gen3/optimizer.pt runs/gen3/log.jsonl "$dir/"
  step="$("${ICSEG_PYTHON:-.venv/bin/python}" -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=True)['step'])" "$dir/last.pt")"
  printf 'STEPS=%d\nDECAY_STEPS=%d\n' "$((step + decay))" "$decay" > "$dir/branch.env"
fi
# shellcheck disable=SC1091
source "$dir/branch.env"
STEPS="$STEPS" DECAY_STEPS="$DECAY_STEPS" exec runs/gen3/launch.sh --run-dir "$dir" "$@"

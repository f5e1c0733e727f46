#!/usr/bin/env bash
# A second WSD decay branch of runs/gen3 (docs/model-card.md): gen3's stable phase (constant lr 3e-4, EMA 0.999)
# stopped at step 6,077, about 2,000 steps later than the branch point of runs/gen3-decay (4,066); this branch decays
# the learning rate linearly to 2 % over 600 steps (steps 6,077 -> 6,677: a decay that fits one session on an AVX2
# machine, where a step takes about 5 s in float32), same data and mix. runs/gen3 stays in its stable phase. Resumes
# exactly from runs/gen3-decay2/last.pt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
if [ ! -f runs/gen3-decay2/last.pt ]; then
  cp runs/gen3/last.pt runs/gen3/optimizer.pt runs/gen3/log.jsonl runs/gen3-decay2/
fi
STEPS="${STEPS:-6677}" DECAY_STEPS="${DECAY_STEPS:-600}" exec runs/gen3/launch.sh --run-dir runs/gen3-decay2 "$@"

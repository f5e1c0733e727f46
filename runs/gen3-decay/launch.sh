#!/usr/bin/env bash
# The WSD decay branch of runs/gen3 (docs/model-card.md): gen3's stable phase (constant lr 3e-4, EMA 0.999) stopped
# at step 4,066; this branch starts from that state and decays the learning rate linearly to 2 % over 1,500
# steps (--schedule wsd: steps 4,066 -> 5,566), same data and mix. runs/gen3 itself stays in its stable phase,
# so it can still be extended and branched again later. Resumes exactly from runs/gen3-decay/last.pt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
if [ ! -f runs/gen3-decay/last.pt ]; then
  cp runs/gen3/last.pt runs/gen3/optimizer.pt runs/gen3/log.jsonl runs/gen3-decay/
fi
STEPS="${STEPS:-5566}" DECAY_STEPS="${DECAY_STEPS:-1500}" exec runs/gen3/launch.sh --run-dir runs/gen3-decay "$@"

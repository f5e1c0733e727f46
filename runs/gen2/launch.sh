#!/usr/bin/env bash
# The second-generation default model's run (docs/model-card.md). Resumes exactly from runs/gen2/last.pt.
# STEPS: the horizon; WSD decays the learning rate over the last --decay-steps, so raising STEPS while the run
# is in its stable phase changes nothing already trained.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-100000}
exec "${ICSEG_BIN:-.venv/bin/icseg}" train --run-dir runs/gen2 --data-root ../shared/datasets \
  --exclude ph2,kvasir_seg,faz_octa,ddti_thyroid,aorta_ct,left_atrium_mri,monuseg,em_membrane \
  --init-weights model/weights/icseg-default.safetensors \
  --steps "$STEPS" --batch-size 4 --support-min 1 --support-max 32 --support-dist loguniform \
  --synthetic-fraction 0.3 --shape-fraction 0.6 --superpixel-fraction 0.15 \
  --empty-query-fraction 0.1 --empty-slice-step 8 --augment-backend batched --task-augment-p 0.2 \
  --lr 0.0005 --lr-warmup-steps 100 --schedule wsd --decay-steps "${DECAY_STEPS:-600}" --ema-decay 0.998 \
  --loss "${LOSS:-dice_bce}" --bf16 --threads 2 --workers 1 --checkpoint-minutes 10 --no-progress "$@"

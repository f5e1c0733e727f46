#!/usr/bin/env bash
# The third run of the second-generation model (docs/model-card.md): continues runs/gen2's EMA weights on the same
# data and mix at a constant learning rate with an EMA (the shipped weights are the EMA), so the run can be
# extended or stopped at any session boundary without a schedule jump. Resumes exactly from runs/gen3/last.pt.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${ICSEG_BIN:-.venv/bin/icseg}" train --run-dir runs/gen3 --data-root ../shared/datasets \
  --exclude ph2,kvasir_seg,faz_octa,ddti_thyroid,aorta_ct,left_atrium_mri,monuseg,em_membrane \
  --init-weights runs/gen2/model.safetensors \
  --steps "${STEPS:-1000000}" --batch-size 4 --support-min 1 --support-max 32 --support-dist loguniform \
  --synthetic-fraction 0.3 --shape-fraction 0.6 --superpixel-fraction 0.15 \
  --empty-query-fraction 0.1 --empty-slice-step 8 --augment-backend batched --task-augment-p 0.2 \
  --lr 0.0003 --lr-warmup-steps 100 --schedule wsd --decay-steps "${DECAY_STEPS:-1000}" --ema-decay 0.999 \
  --loss dice_bce --bf16 --threads 2 --workers 1 --checkpoint-minutes 10 --no-progress "$@"

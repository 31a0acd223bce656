#!/usr/bin/env bash
# Iterative pruning over $LEVELS with METHOD (slt, lt or clt; default slt): each level's mask from the
# previous level's best checkpoint, its weights from the previous level's own theta_k (theta_0 for lt).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${METHOD:=${1:-slt}}"
claim_stage "$WORK/$METHOD"
# shellcheck disable=SC2086
fairseq-slt iterate --method "$METHOD" --levels "$(echo $LEVELS | tr ' ' ',')" --rewind-k "$REWIND_K" \
  --dense-dir "$WORK/dense" --work-dir "$WORK/$METHOD" --train-command "$TRAIN_COMMAND" -- "$DATA" $ARCH_ARGS $TRAIN_ARGS \
  $DEVICE_ARGS --max-update "$MAX_UPDATE"

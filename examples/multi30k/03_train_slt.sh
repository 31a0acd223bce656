#!/usr/bin/env bash
# SLT: mask at $SPARSITY from the converged dense model, weights rewound to theta_k, retrain.
# METHOD=lt rewinds to theta_0 instead.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${METHOD:=slt}"
point=$REWIND_K; [ "$METHOD" = lt ] && point=0
run="$WORK/${METHOD}_${SPARSITY}"
[ -e "$(done_marker "$run")" ] && { echo "$METHOD $SPARSITY: done"; exit 0; }
slt_train --prune-method "$METHOD" --prune-sparsity "$SPARSITY" \
  --prune-mask-from "$WORK/dense/checkpoint_best.pt" \
  --prune-rewind-from "$WORK/dense/checkpoint_rewind_${point}.pt" \
  --save-rewind-points "$REWIND_K" --save-dir "$run" 2>&1 | tee -a "$run.log"
touch "$(done_marker "$run")"

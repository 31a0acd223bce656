#!/usr/bin/env bash
# SLT: mask at $SPARSITY from the converged dense model, weights rewound to theta_k, retrain.
# METHOD=lt rewinds to theta_0 instead.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${METHOD:=slt}"
point=$REWIND_K; [ "$METHOD" = lt ] && point=0
train_stage "${METHOD}_${SPARSITY}" --prune-method "$METHOD" --prune-sparsity "$SPARSITY" \
  --prune-mask-from "$WORK/dense/checkpoint_best.pt" --prune-rewind-from "$WORK/dense/checkpoint_rewind_${point}.pt" \
  --save-rewind-points "$REWIND_K"

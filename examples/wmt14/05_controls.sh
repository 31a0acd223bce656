#!/usr/bin/env bash
# The sign control: CLT at 50 % with random signs (compare with CLT 50 % of 04_iterate.sh clt).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_stage controls/clt_0.5_random_signs --prune-method clt --prune-sparsity 0.5 --prune-clt-random-signs \
  --prune-mask-from "$WORK/dense/checkpoint_best.pt" --prune-rewind-from "$WORK/dense/checkpoint_rewind_$REWIND_K.pt"

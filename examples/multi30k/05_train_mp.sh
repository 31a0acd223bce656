#!/usr/bin/env bash
# MP: gradual magnitude pruning from scratch to each level in $LEVELS (cubic schedule, the paper's
# t_end = 80 % and every 2 % of training); saves theta_k for MP-SLT.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
for level in $LEVELS; do
  # shellcheck disable=SC2046
  train_stage "mp/mp_$level" --prune-method mp --prune-sparsity "$level" $(mp_schedule) \
    --save-rewind-points "$REWIND_K"
done

#!/usr/bin/env bash
# MP: gradual magnitude pruning to each level (cubic schedule to 80 % of training, every 2 %), one run each.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
for level in $LEVELS; do
  # shellcheck disable=SC2046
  train_stage "mp/mp_$level" --prune-method mp --prune-sparsity "$level" $(mp_schedule) --save-rewind-points "$REWIND_K"
done

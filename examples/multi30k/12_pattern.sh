#!/usr/bin/env bash
# N:M sparsity (--prune-pattern 2:4, the pattern sparse tensor cores run) against unstructured pruning at
# 50 %: SLT 2:4 from the dense run (02_train_dense.sh) beside SLT 50 % (06_iterate.sh), and MP 2:4.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
dense="$WORK/dense"
[ -e "$(done_marker "$dense")" ] || { echo "error: run 02_train_dense.sh first ($dense is not finished)"; exit 1; }
train_stage "pattern/slt_2of4" --prune-method slt --prune-sparsity 0.5 --prune-pattern 2:4 \
  --prune-mask-from "$dense/checkpoint_best.pt" --prune-rewind-from "$dense/checkpoint_rewind_$REWIND_K.pt" \
  --save-rewind-points "$REWIND_K"
# shellcheck disable=SC2046
train_stage "pattern/mp_2of4" --prune-method mp --prune-sparsity 0.5 --prune-pattern 2:4 $(mp_schedule)

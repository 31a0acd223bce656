#!/usr/bin/env bash
# SLT-MP (the paper's proposal): SLT directly to 50 %, then to s_i = $INTERMEDIATE, then MP from its
# theta_k (.) m with s_0 = s_i to each level above. MP-SLT: MP to s_i, then SLT levels above it.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck disable=SC2086
run fairseq-slt iterate --method slt --levels "0.5,$INTERMEDIATE" --rewind-k "$REWIND_K" --dense-dir "$WORK/dense" \
  --work-dir "$WORK/slt-direct" -- "$DATA" $ARCH_ARGS $TRAIN_ARGS --max-update "$MAX_UPDATE"
base="$WORK/slt-direct/slt_$INTERMEDIATE"
for level in $(above "$INTERMEDIATE"); do
  # shellcheck disable=SC2046
  train_stage "slt-mp/mp_$level" --prune-method mp --prune-sparsity "$level" --prune-initial-sparsity "$INTERMEDIATE" \
    $(mp_schedule) --prune-mask-from "$base/checkpoint_best.pt" --prune-rewind-from "$base/checkpoint_rewind_$REWIND_K.pt"
done
previous="$WORK/mp/mp_$INTERMEDIATE"
for level in $(above "$INTERMEDIATE"); do
  train_stage "mp-slt/slt_$level" --prune-method slt --prune-sparsity "$level" --save-rewind-points "$REWIND_K" \
    --prune-mask-from "$previous/checkpoint_best.pt" --prune-rewind-from "$previous/checkpoint_rewind_$REWIND_K.pt"
  previous="$WORK/mp-slt/slt_$level"
done

#!/usr/bin/env bash
# SLT-MP: SLT to s_i = $INTERMEDIATE (06_iterate.sh slt), then MP from its theta_k (.) m with s_0 = s_i.
# MP-SLT: MP to s_i (05_train_mp.sh), its mask and theta_k, then SLT levels above s_i. WHICH=slt-mp|mp-slt|both
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${WHICH:=${1:-both}}"
above=$(for level in $LEVELS; do python3 -c "import sys; sys.exit(not $level > $INTERMEDIATE)" && echo "$level"; done)
if [ "$WHICH" != mp-slt ]; then
  slt="$WORK/slt/slt_$INTERMEDIATE"
  for level in $above; do
    # shellcheck disable=SC2046
    train_stage "slt-mp/mp_$level" --prune-method mp --prune-sparsity "$level" \
      --prune-initial-sparsity "$INTERMEDIATE" $(mp_schedule) \
      --prune-mask-from "$slt/checkpoint_best.pt" --prune-rewind-from "$slt/checkpoint_rewind_$REWIND_K.pt"
  done
fi
if [ "$WHICH" != slt-mp ]; then
  previous="$WORK/mp/mp_$INTERMEDIATE"
  for level in $above; do
    train_stage "mp-slt/slt_$level" --prune-method slt --prune-sparsity "$level" --save-rewind-points "$REWIND_K" \
      --prune-mask-from "$previous/checkpoint_best.pt" --prune-rewind-from "$previous/checkpoint_rewind_$REWIND_K.pt"
    previous="$WORK/mp-slt/slt_$level"
  done
fi

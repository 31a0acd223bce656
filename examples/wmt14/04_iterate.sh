#!/usr/bin/env bash
# Iterative LT, SLT or CLT over the paper's levels (METHOD or $1; default slt); theta_k from the latest level.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${METHOD:=${1:-slt}}"
# shellcheck disable=SC2086
run fairseq-slt iterate --method "$METHOD" --levels "$(echo $LEVELS | tr ' ' ',')" --rewind-k "$REWIND_K" \
  --dense-dir "$WORK/dense" --work-dir "$WORK/$METHOD" -- "$DATA" $ARCH_ARGS $TRAIN_ARGS --max-update "$MAX_UPDATE"

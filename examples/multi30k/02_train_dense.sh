#!/usr/bin/env bash
# Dense baseline that also saves the rewind points theta_0 and theta_k.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run="$WORK/dense"
claim_stage "$run"
[ -e "$(done_marker "$run")" ] && { echo "dense: done"; exit 0; }
slt_train --prune-method none --save-rewind-points "0,$REWIND_K" --save-dir "$run" 2>&1 | tee -a "$WORK/dense.log"
touch "$(done_marker "$run")"

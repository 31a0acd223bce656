#!/usr/bin/env bash
# Dense baseline that also saves the rewind points theta_0 and theta_k.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_stage dense --prune-method none --save-rewind-points "0,$REWIND_K"

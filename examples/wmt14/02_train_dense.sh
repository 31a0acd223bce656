#!/usr/bin/env bash
# Dense transformer-base, saving theta_0 and theta_k (k = 5 % of training).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
train_stage dense --prune-method none --save-rewind-points "0,$REWIND_K"

#!/usr/bin/env bash
# Every method of the paper on WMT14 $PAIR. DRY_RUN=1 prints every command and runs nothing.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
for step in 01_prepare.sh 02_train_dense.sh 03_train_mp.sh "04_iterate.sh slt" "04_iterate.sh clt" \
    "04_iterate.sh lt" 05_controls.sh 06_combined.sh 07_evaluate.sh; do
  # shellcheck disable=SC2086
  bash "$RECIPE_DIR"/$step
done

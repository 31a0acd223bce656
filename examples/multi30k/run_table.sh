#!/usr/bin/env bash
# The paper's Table 1 at Multi30k scale: dense; MP, SLT, CLT, LT at $LEVELS; the sign control; SLT-MP and
# MP-SLT above $INTERMEDIATE; then the table. Resumable: every finished stage is skipped when rerun.
# About 22 runs of $MAX_UPDATE updates (~10 min each at 1000 updates on 2 CPU cores).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$(date +%s)
bash "$RECIPE_DIR/01_prepare.sh" > "$WORK/prepare.log" 2>&1 || { tail -n 5 "$WORK/prepare.log"; exit 1; }
bash "$RECIPE_DIR/02_train_dense.sh"
# the runs behind the paper's claims first: SLT vs MP, SLT-MP, CLT vs random signs, MP-SLT, then LT
bash "$RECIPE_DIR/06_iterate.sh" slt
bash "$RECIPE_DIR/05_train_mp.sh"
bash "$RECIPE_DIR/08_combined.sh" slt-mp
bash "$RECIPE_DIR/06_iterate.sh" clt
bash "$RECIPE_DIR/07_controls.sh"
bash "$RECIPE_DIR/08_combined.sh" mp-slt
bash "$RECIPE_DIR/06_iterate.sh" lt
bash "$RECIPE_DIR/09_results.sh"
echo "wall time: $(( $(date +%s) - start )) s"

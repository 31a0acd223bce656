#!/usr/bin/env bash
# The short end-to-end demo: prepare Multi30k En-De, dense run with rewind points, SLT at 80 %,
# generate + sacreBLEU, and print dense vs pruned BLEU. Resumable: finished stages are skipped.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$(date +%s)
bash "$RECIPE_DIR/01_prepare.sh" > "$WORK/prepare.log" 2>&1 || { tail -n 5 "$WORK/prepare.log"; exit 1; }
echo "dense run: $MAX_UPDATE updates (log: $WORK/dense.log)"
bash "$RECIPE_DIR/02_train_dense.sh" > /dev/null || { echo "dense training failed: see $WORK/dense.log"; exit 1; }
echo "slt run at sparsity $SPARSITY from theta_$REWIND_K (log: $WORK/slt_$SPARSITY.log)"
bash "$RECIPE_DIR/03_train_slt.sh" > /dev/null || { echo "slt training failed: see $WORK/slt_$SPARSITY.log"; exit 1; }
bash "$RECIPE_DIR/04_evaluate.sh"
echo "wall time: $(( $(date +%s) - start )) s (MAX_UPDATE=$MAX_UPDATE per run, k=$REWIND_K, THREADS=$THREADS)"

#!/usr/bin/env bash
# The short end-to-end demo: prepare Multi30k En-De, dense run with rewind points, SLT at 80 %,
# generate + sacreBLEU, and print dense vs pruned BLEU. Resumable: finished stages are skipped.
# About 25 min on 2 CPU cores (two runs of 1000 updates, ~10 min each, and scoring).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$(date +%s)
echo "fairseq-slt demo: work dir $WORK (logs, checkpoints and results.tsv go there)"
bash "$RECIPE_DIR/01_prepare.sh" > "$WORK/prepare.log" 2>&1 || { tail -n 5 "$WORK/prepare.log"; exit 1; }
bash "$RECIPE_DIR/02_train_dense.sh"
bash "$RECIPE_DIR/03_train_slt.sh"
echo "scoring with fairseq-generate + sacreBLEU on test_2016_flickr (beam $BEAM)"
bash "$RECIPE_DIR/04_evaluate.sh"
echo "wall time: $(( $(date +%s) - start )) s (MAX_UPDATE=$MAX_UPDATE per run, k=$REWIND_K, THREADS=$THREADS)"

#!/usr/bin/env bash
# newstest2014 BLEU (sacreBLEU on detokenized, cased output against the raw references; the signature is
# in the table), chrF, the Table 1 layout, the plot and JSON in $WORK/results.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run fairseq-slt results "$WORK" --subset test --beam "$BEAM" --batch-size 128 --remove-bpe sentencepiece \
  --references "$WORK/data/text/test.$TGT" --chrf --table "$WORK/results/table.md" \
  --plot "$WORK/results/bleu_vs_sparsity.png" --json "$WORK/results/results.json" --force

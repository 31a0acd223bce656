#!/usr/bin/env bash
# Scores every finished run (cached beside it) and writes the table, plot and JSON to $WORK/results.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fairseq-slt results "$WORK" --generate-command "$GENERATE_COMMAND" --beam "$BEAM" --remove-bpe sentencepiece --references "$WORK/data/text/test.$TGT" \
  --chrf --table "$WORK/results/table.md" --plot "$WORK/results/bleu_vs_sparsity.png" --json "$WORK/results/results.json" --force

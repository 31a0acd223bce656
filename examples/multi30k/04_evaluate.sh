#!/usr/bin/env bash
# sacreBLEU of each run's best checkpoint on test_2016_flickr; writes $WORK/results.tsv.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${RUNS:=dense ${METHOD:-slt}_$SPARSITY}"
printf "run\tsparsity\tbleu\n" > "$WORK/results.tsv.part"
for name in $RUNS; do
  checkpoint="$WORK/$name/checkpoint_best.pt"
  # shellcheck disable=SC2086
  $GENERATE_COMMAND "$DATA" --user-dir "$USER_DIR" --task translation_slt --path "$checkpoint" \
    --gen-subset test --beam "$BEAM" --batch-size 128 --remove-bpe sentencepiece --scoring sacrebleu \
    $GENERATE_DEVICE_ARGS --quiet > "$WORK/$name/generate-test.txt" 2>&1
  bleu=$(grep -oP "BLEU = \K[0-9.]+" "$WORK/$name/generate-test.txt" | tail -n 1)
  sparsity=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['sparsity'])" "$WORK/$name/mask_report.json" 2>/dev/null || echo 0)
  printf "%s\t%s\t%s\n" "$name" "$sparsity" "$bleu" >> "$WORK/results.tsv.part"
done
mv "$WORK/results.tsv.part" "$WORK/results.tsv"
column -t "$WORK/results.tsv"

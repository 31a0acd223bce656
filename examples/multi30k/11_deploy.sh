#!/usr/bin/env bash
# Deploy a pruned run (default: the demo's SLT run): a compact file to store it, and a CTranslate2 model to
# serve it, verified against fairseq-generate on the test set (fp32 hypotheses identical, BLEU within 0.3).
# RUN=slt_0.8 QUANTIZATION=int8 bash examples/multi30k/11_deploy.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${RUN:=${METHOD:-slt}_$SPARSITY}" "${QUANTIZATION:=int8}"
run="$WORK/$RUN" out="$WORK/deploy/$RUN"
mkdir -p "$out"
[ -e "$out/compact.pt" ] || fairseq-slt compress "$run/checkpoint_best.pt" "$out/compact.pt" --quiet \
  --json "$out/compact.json"
[ -e "$out/ct2-$QUANTIZATION" ] || fairseq-slt export-ct2 "$out/compact.pt" "$out/ct2-$QUANTIZATION" \
  --quantization "$QUANTIZATION" --data "$DATA" --threads "$THREADS" --generate-command "$GENERATE_COMMAND" \
  --json "$out/ct2-$QUANTIZATION.json"
du -sb "$run/checkpoint_best.pt" "$out/compact.pt" "$out/ct2-$QUANTIZATION"

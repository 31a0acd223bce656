#!/usr/bin/env bash
# Multi30k -> joint SentencePiece -> fairseq binaries in $WORK/data (skips what exists).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck disable=SC2086
fairseq-slt prepare --raw-dir "$MULTI30K_DIR" --out "$WORK/data" --src "$SRC" --tgt "$TGT" \
  --vocab-size "$VOCAB_SIZE" --workers "$THREADS" $PREPARE_ARGS

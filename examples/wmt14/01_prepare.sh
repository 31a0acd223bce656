#!/usr/bin/env bash
# WMT14 training data (the corpora of fairseq's prepare-wmt14en2de.sh / en2fr.sh), newstest2013 (valid) and
# newstest2014 (test) from sacreBLEU, one shared SentencePiece model, fairseq binaries in $WORK/data.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
raw="$WORK/raw"
if [ "$PAIR" = en-de ]; then
  urls=(http://www.statmt.org/europarl/v7/de-en.tgz http://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz
        http://www.statmt.org/wmt14/training-parallel-nc-v9.tgz)
  corpora="$raw/training/europarl-v7.de-en,$raw/commoncrawl.de-en,$raw/training/news-commentary-v9.de-en"
else
  urls=(http://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz
        http://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz
        http://www.statmt.org/wmt13/training-parallel-un.tgz http://www.statmt.org/wmt14/training-parallel-nc-v9.tgz
        http://www.statmt.org/wmt10/training-giga-fren.tar)
  corpora="$raw/training/europarl-v7.fr-en,$raw/commoncrawl.fr-en,$raw/un/undoc.2000.fr-en"
  corpora+=",$raw/training/news-commentary-v9.fr-en,$raw/giga-fren.release2.fixed"
fi
run mkdir -p "$raw"
for url in "${urls[@]}"; do
  run wget -nc -q -P "$raw" "$url"
  run tar -xf "$raw/$(basename "$url")" -C "$raw"
done
for split in newstest2013:wmt13 newstest2014:wmt14; do
  for side in src:"$SRC" ref:"$TGT"; do
    run_to "$raw/${split%:*}.${side#*:}" sacrebleu -t "${split#*:}" -l "$PAIR" --echo "${side%:*}"
  done
done
run fairseq-slt prepare --out "$WORK/data" --src "$SRC" --tgt "$TGT" --train "$corpora" \
  --valid "$raw/newstest2013" --test "$raw/newstest2014" --vocab-size "$VOCAB_SIZE" --spm-sample 10000000 \
  --workers 16

#!/usr/bin/env bash
# `make demo`: every stage that exists, end to end on CPU, on the shared sample corpora.
# Artifacts go to $1 (default demo_out/); a rerun reuses every stage that is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_out}
PY=${PY:-.venv/bin/python}
CORPORA=${CORPORA:-../shared/corpora}
mkdir -p "$OUT"

step() { printf '\n==> %s\n' "$*"; }

step "1/4 preprocess: LM1B-style sentences -> MDS shards (seq_len 128) + unigram counts"
"$PY" -m preprocess --input "$CORPORA/lm1b_sample/train.txt" --test-input "$CORPORA/lm1b_sample/test.txt" \
    --valid-fraction 0.02 --mode lm1b --seq-len 128 --workers 2 --out "$OUT/lm1b"

if [ -f neighbor_index/__main__.py ]; then
    step "2/4 neighbor_index: MiniLM vocabulary embeddings -> top-k neighbour tables + unigram prior"
    "$PY" -m neighbor_index --preprocessed "$OUT/lm1b" --out "$OUT/neighbors" --k-max 64
    step "kernel diagnostics (paper Sec 3.2, App B.4/B.6) on the real neighbour tables"
    "$PY" -m pipeline.diagnose --neighbors "$OUT/neighbors" --kernels mask,uniform,semdlm,semdlm_plus \
        --out "$OUT/diagnose"
fi

printf '\nDemo artifacts are under %s/ (each with a manifest.json).\n' "$OUT"

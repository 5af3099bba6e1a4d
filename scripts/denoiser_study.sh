#!/usr/bin/env bash
# The kernel-aware denoiser study (docs/likelihood.md Sec 7.6): tiny models of every kernel and reading,
# same data, tokens and seed, each exported, evaluated (test bound with its standard error, ctmc samples
# under the AR judge) and t-profiled. Usage: bash scripts/denoiser_study.sh OUT [STEPS]
# Needs OUT/lm1b and OUT/neighbors (make demo DEMO=OUT builds both) or PRE / NB pointing at them.
# A rerun skips every stage that is up to date (training resumes from its last checkpoint).
# ONLY="name1 name2" runs a subset of the runs below (e.g. a longer budget for the kernels still above the
# unigram entropy); JUDGE=path reuses an AR export as the Gen-PPL judge instead of training one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: denoiser_study.sh OUT [STEPS]}
STEPS=${2:-1200}
PY=${PY:-.venv/bin/python}
PRE=${PRE:-$OUT/lm1b}
NB=${NB:-$OUT/neighbors}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OPTIONS=(--ds_config ds_configs/zero2.json --config configs/tiny.yaml --preprocessed "$PRE" --max-steps "$STEPS")
OVERRIDES=(global_batch=32 micro_batch=16 val_every="$STEPS" val_batches=4 log_every=100 ckpt_every="$STEPS" seed=0)

train() {  # NAME KERNEL [overrides...]  (argparse takes the key=value overrides after every option)
    local name=$1 kernel=$2; shift 2
    "$PY" pipeline/train.py "${OPTIONS[@]}" --neighbors "$NB" --kernel "$kernel" --run-dir "$OUT/runs/$name" \
        "${OVERRIDES[@]}" "$@" > "$OUT/logs/$name.train.log" 2>&1
    "$PY" -m pipeline.export "$OUT/runs/$name" --out "$OUT/exports/$name" >> "$OUT/logs/$name.train.log" 2>&1
}

evaluate() {  # NAME
    local name=$1
    "$PY" -m pipeline.evaluate --model "$OUT/exports/$name" --out "$OUT/eval/$name" --judge "$OUT/exports/ar" \
        --steps 64 --lambda-freq 0 --lambda-sem 0 --num-samples 32 --batch-size 16 --max-test-sequences 128 \
        --t-draws 4 --quiet > "$OUT/logs/$name.eval.log" 2>&1
    "$PY" -m pipeline.t_profile --model "$OUT/exports/$name" --sequences 64 \
        --out "$OUT/eval/$name/t_profile.json" >> "$OUT/logs/$name.eval.log" 2>&1
}

mkdir -p "$OUT/logs" "$OUT/exports"
if [ -n "${JUDGE:-}" ] && [ ! -e "$OUT/exports/ar" ]; then ln -s "$(realpath "$JUDGE")" "$OUT/exports/ar"; fi
if [ ! -d "$OUT/exports/ar" ]; then
    "$PY" pipeline/train.py --ds_config ds_configs/zero2.json --config configs/tiny_ar.yaml --preprocessed "$PRE" \
        --max-steps "$STEPS" global_batch=32 micro_batch=16 val_every="$STEPS" log_every=100 ckpt_every="$STEPS" \
        --run-dir "$OUT/runs/ar" > "$OUT/logs/ar.train.log" 2>&1
    "$PY" -m pipeline.export "$OUT/runs/ar" --out "$OUT/exports/ar" >> "$OUT/logs/ar.train.log" 2>&1
fi
RUNS=(  # the paper's kernel and the MDLM anchor first
  "mask_elbo mask loss=elbo"
  "semdlm_plus_ca_kernel semdlm_plus loss=change_aware parameterization=kernel"
  "semdlm_plus_ca_direct semdlm_plus loss=change_aware parameterization=direct"
  "semdlm_plus_elbo_kernel semdlm_plus loss=elbo parameterization=kernel"
  "semdlm_plus_elbo_direct semdlm_plus loss=elbo parameterization=direct"
  "uniform_elbo_kernel uniform loss=elbo parameterization=kernel"
  "uniform_ca_kernel uniform loss=change_aware parameterization=kernel"
  "uniform_elbo_direct uniform loss=elbo parameterization=direct"
  "uniform_ca_direct uniform loss=change_aware parameterization=direct"
)
for spec in "${RUNS[@]}"; do
    read -r name kernel overrides <<<"$spec"
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    printf '==> %s (%s)\n' "$name" "$(date +%T)"
    # shellcheck disable=SC2086 # the overrides are words
    train "$name" "$kernel" $overrides
    evaluate "$name"
done
"$PY" scripts/denoiser_study_table.py "$OUT"

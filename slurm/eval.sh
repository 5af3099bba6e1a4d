#!/bin/bash
# Evaluate an export on SLURM: test NELBO, and a sampling sweep scored by a judge LM.
#
#   MODEL=artifacts/export OUT=artifacts/eval JUDGE=gpt2-large sbatch slurm/eval.sh
#   MODEL=... OUT=... STEPS=128,256,512 LAMBDA_FREQ=0,0.5,1 LAMBDA_SEM=0,0.5 sbatch slurm/eval.sh
#   SAMPLES=artifacts/samples MODEL=... OUT=... sbatch slurm/eval.sh     # score existing samples
#
# Offline clusters: JUDGE=/path/to/local/gpt2-large (HF directory) or an AR export of this pipeline.
# Submit from the repository root (logs go to logs/). CPU cluster: override the GPU request and
# size the job, e.g. `sbatch --gpus-per-node=0 --cpus-per-task=2 --mem=8G slurm/eval.sh`.
#SBATCH --job-name=semdlm-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=08:00:00
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

# ---- variables users set ------------------------------------------------------------------
MODEL=${MODEL:?set MODEL to an export directory}
OUT=${OUT:?set OUT to the output directory}
JUDGE=${JUDGE:-gpt2-large}              # HF id/dir, AR export dir, or none
SAMPLES=${SAMPLES:-""}                  # evaluate these samples instead of sampling
STEPS=${STEPS:-128,256,512}             # sweep (comma lists)
LAMBDA_FREQ=${LAMBDA_FREQ:-0}
LAMBDA_SEM=${LAMBDA_SEM:-0}
NUM_SAMPLES=${NUM_SAMPLES:-256}
BATCH_SIZE=${BATCH_SIZE:-32}
T_DRAWS=${T_DRAWS:-4}                   # t draws per test sequence
MAX_TEST=${MAX_TEST:-2048}              # test sequences for the NELBO
PYTHON=${PYTHON:-.venv/bin/python}
EXTRA_ARGS=${EXTRA_ARGS:-""}            # anything else for python -m pipeline.evaluate
# --------------------------------------------------------------------------------------------

args=(--model "$MODEL" --out "$OUT" --judge "$JUDGE" --t-draws "$T_DRAWS" --max-test-sequences "$MAX_TEST"
      --num-samples "$NUM_SAMPLES" --batch-size "$BATCH_SIZE" --quiet)
if [[ -n "$SAMPLES" ]]; then
    args+=(--samples "$SAMPLES")
else
    args+=(--steps "$STEPS" --lambda-freq "$LAMBDA_FREQ" --lambda-sem "$LAMBDA_SEM")
fi
# shellcheck disable=SC2086
"$PYTHON" -m pipeline.evaluate "${args[@]}" $EXTRA_ARGS

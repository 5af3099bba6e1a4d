#!/bin/bash
# Draw samples from an export on SLURM, one process per GPU; rank 0 gathers samples.jsonl.
#
#   MODEL=artifacts/export OUT=artifacts/samples sbatch slurm/sample.sh
#   MODEL=... OUT=... STEPS=512 NUM_SAMPLES=1024 GPUS=8 LAMBDA_FREQ=1 LAMBDA_SEM=0.5 sbatch slurm/sample.sh
#
# torchrun sets RANK / WORLD_SIZE; every rank draws the batches k = rank, rank + WORLD_SIZE, ...
# with seeds derived from (SEED, k), so the samples do not depend on the number of GPUs.
#
# Submit from the repository root (logs go to logs/). CPU cluster: override the GPU request and
# size the job, e.g. `sbatch --gpus-per-node=0 --cpus-per-task=2 --mem=8G slurm/sample.sh`;
# GPUS is then the number of CPU processes (default 1).
#SBATCH --job-name=semdlm-sample
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

# ---- variables users set ------------------------------------------------------------------
MODEL=${MODEL:?set MODEL to an export directory (python -m pipeline.export)}
OUT=${OUT:?set OUT to the output directory}
METHOD=${METHOD:-""}                    # empty: mdlm for the mask kernel, blockwise otherwise
STEPS=${STEPS:-128}                     # total denoising steps over all blocks
STRIDES=${STRIDES:-2}
NUM_SAMPLES=${NUM_SAMPLES:-512}
BATCH_SIZE=${BATCH_SIZE:-32}
SEQ_LEN=${SEQ_LEN:-""}                  # empty: the preprocessed sequence length
SEED=${SEED:-0}
LAMBDA_FREQ=${LAMBDA_FREQ:-0}
LAMBDA_SEM=${LAMBDA_SEM:-0}
WINDOW=${WINDOW:-16}
GPUS=${GPUS:-${SLURM_GPUS_ON_NODE:-1}}  # processes (one per GPU; CPU processes without GPUs)
PYTHON=${PYTHON:-.venv/bin/python}
EXTRA_ARGS=${EXTRA_ARGS:-""}            # anything else for python -m pipeline.sample
# --------------------------------------------------------------------------------------------

(( GPUS > 0 )) || GPUS=1                 # --gpus-per-node=0 sets SLURM_GPUS_ON_NODE=0
args=(--model "$MODEL" --out "$OUT" --steps "$STEPS" --strides "$STRIDES" --num-samples "$NUM_SAMPLES"
      --batch-size "$BATCH_SIZE" --seed "$SEED" --lambda-freq "$LAMBDA_FREQ" --lambda-sem "$LAMBDA_SEM"
      --window "$WINDOW" --quiet)
[[ -n "$METHOD" ]] && args+=(--method "$METHOD")
[[ -n "$SEQ_LEN" ]] && args+=(--seq-len "$SEQ_LEN")
# Each rank uses cuda:$LOCAL_RANK (pipeline.sample reads LOCAL_RANK).
# shellcheck disable=SC2086
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" \
    -m pipeline.sample "${args[@]}" $EXTRA_ARGS

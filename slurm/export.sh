#!/bin/bash
# Export a training run (EMA weights -> config.json + model.safetensors) on SLURM: one CPU process.
#
#   RUN_DIR=runs/lm1b OUT=exports/lm1b sbatch slurm/export.sh
#   RUN_DIR=runs/lm1b OUT=exports/lm1b_step8 EXTRA_ARGS="--tag global_step8" sbatch slurm/export.sh
#
# Submit from the repository root (logs go to logs/). It reads the checkpoint files directly (no
# DeepSpeed engine, no GPU); a rerun on the same checkpoint prints "up to date".
#SBATCH --job-name=semdlm-export
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=16G
#SBATCH --time=01:00:00
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

# ---- variables users set ------------------------------------------------------------------
RUN_DIR=${RUN_DIR:?set RUN_DIR to a training run directory}
OUT=${OUT:?set OUT to the export directory}
PYTHON=${PYTHON:-.venv/bin/python}
EXTRA_ARGS=${EXTRA_ARGS:-""}            # anything else for python -m pipeline.export (--tag, --raw-weights, --eval)
# --------------------------------------------------------------------------------------------

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# shellcheck disable=SC2086
"$PYTHON" -m pipeline.export "$RUN_DIR" --out "$OUT" $EXTRA_ARGS

#!/bin/bash
# One stage command as a SLURM job: what `python -m pipeline.study SPEC --out DIR --slurm` submits for
# every cell but training (training goes through slurm/train.sh).
#
#   sbatch slurm/cell.sh .venv/bin/python -m pipeline.evaluate --model exports/x --out eval/x ...
#   sbatch --gpus-per-node=0 --cpus-per-task=2 --mem=8G slurm/cell.sh .venv/bin/python -m pipeline.export ...
#
# It runs the command it is given, from the directory it was submitted from. With STUDY_DIR and
# STUDY_CELL set (pipeline.study sets them) it then stamps that cell of the study as done, so the
# study sees it cached; a failed command stamps nothing. Logs go to logs/ unless --output says otherwise.
#SBATCH --job-name=semdlm-cell
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=08:00:00
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

# ---- variables users set ------------------------------------------------------------------
PYTHON=${PYTHON:-.venv/bin/python}      # the interpreter that writes the stamp
STUDY_DIR=${STUDY_DIR:-""}              # a study's --out and the cell this job runs: stamp it on success
STUDY_CELL=${STUDY_CELL:-""}
# --------------------------------------------------------------------------------------------

(( $# > 0 )) || { echo "slurm/cell.sh: error: give the command to run (sbatch slurm/cell.sh CMD ARGS...)" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-4}}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

echo "$(date "+%F %T"): job ${SLURM_JOB_ID:-} on ${SLURM_JOB_NODELIST:-$(hostname)}${STUDY_CELL:+, cell $STUDY_CELL}"
echo "\$ $*"
"$@"
if [[ -n "$STUDY_CELL" ]]; then
    "$PYTHON" -m pipeline.studies.stamp "${STUDY_DIR:?set STUDY_DIR with STUDY_CELL}" "$STUDY_CELL" --seconds "$SECONDS"
fi
echo "$(date "+%F %T"): done in ${SECONDS} s"

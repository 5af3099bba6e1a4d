#!/bin/bash
# Build the neighbour tables (neighbor_index stage) on one node, CPU or GPU.
#
#   sbatch slurm/neighbors.sh                                   # uses the variables below
#   PREPROCESSED=/data/owt_mds OUT=/data/owt_neighbors MIN_COUNT=10 TAU=0.5 sbatch slurm/neighbors.sh
#   sbatch --gres=gpu:1 slurm/neighbors.sh                      # embed on a GPU (DEVICE=auto picks it)
#
# The stage is single-process: the MiniLM pass over 30k token strings takes well under a minute on
# a GPU and about a minute of CPU time otherwise; the exact faiss search uses every CPU of the task.
# A rerun with the same inputs and options prints "up to date" and exits at once.
# Submit from the repository root (logs go to logs/). Small nodes: size the job with sbatch
# options, e.g. `sbatch --cpus-per-task=2 --mem=4G slurm/neighbors.sh` (THREADS follows them).
#SBATCH --job-name=semdlm-neighbors
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=01:00:00
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

# ---- variables users set ------------------------------------------------------------------
PREPROCESSED=${PREPROCESSED:-"artifacts/preprocessed"}  # preprocess artifact directory
OUT=${OUT:-"artifacts/neighbors"}                      # artifact directory to write
K_MAX=${K_MAX:-64}                                     # neighbours per token
ASSOC_K=${ASSOC_K:-$(( K_MAX < 16 ? K_MAX : 16 ))}     # neighbours per row of the sparse S+ (<= K_MAX)
EMBEDDER=${EMBEDDER:-default}                          # sentence-transformers path / hub id
FROM_MODEL=${FROM_MODEL:-""}                           # or: input embeddings of this model/checkpoint
INDEX=${INDEX:-flat}                                   # flat (exact) | ivf | hnsw
TAU=${TAU:-1.0}                                        # Eq 119 exponent, in (0, 1]
MIN_COUNT=${MIN_COUNT:-1}                              # prior support: train count >= MIN_COUNT
DEVICE=${DEVICE:-auto}                                 # auto: cuda if visible, else cpu
THREADS=${THREADS:-${SLURM_CPUS_PER_TASK:-0}}          # 0: all cores
PYTHON=${PYTHON:-.venv/bin/python}
EXTRA_ARGS=${EXTRA_ARGS:-""}                           # anything else for python -m neighbor_index
# --------------------------------------------------------------------------------------------

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
if (( THREADS > 0 )); then export OMP_NUM_THREADS=$THREADS; fi

args=(--preprocessed "$PREPROCESSED" --out "$OUT" --k-max "$K_MAX" --assoc-k "$ASSOC_K" --index "$INDEX" --tau "$TAU"
      --min-count "$MIN_COUNT" --device "$DEVICE" --threads "$THREADS" --no-progress)
if [[ -n "$FROM_MODEL" ]]; then
    args+=(--embeddings-from-model "$FROM_MODEL")
else
    args+=(--embedder "$EMBEDDER")
fi

srun "$PYTHON" -m neighbor_index "${args[@]}" $EXTRA_ARGS

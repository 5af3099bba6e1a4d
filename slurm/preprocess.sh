#!/bin/bash
# Preprocess a corpus on SLURM: an array of NUM_SHARDS group jobs, then one merge job.
#
#   sbatch slurm/preprocess.sh                  # uses the variables below
#   INPUT='/data/owt/*.jsonl' OUT=/data/owt_mds MODE=owt NUM_SHARDS=16 sbatch slurm/preprocess.sh
#
# The first job (this script without PREPROCESS_ROLE) only submits the array and the merge job
# that depends on it, then exits. Every group writes OUT.groups/group-IIIII-of-NNNNN atomically;
# a rerun skips groups that are already up to date, so requeueing a failed array is cheap.
#SBATCH --job-name=semdlm-preprocess
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%A_%a.out

set -euo pipefail

# ---- variables users set ------------------------------------------------------------------
INPUT=${INPUT:-"../shared/corpora/web_sample/train.jsonl"}  # files, folders or globs (quoted)
TEST_INPUT=${TEST_INPUT:-""}            # optional separate test inputs
OUT=${OUT:-"artifacts/preprocessed"}     # artifact directory (groups go to $OUT.groups)
MODE=${MODE:-owt}                       # lm1b (sentences, 128) or owt (documents wrapped, 1024)
SEQ_LEN=${SEQ_LEN:-""}                  # empty: 128 for lm1b, 1024 for owt
TOKENIZER=${TOKENIZER:-default}         # HF path or hub id; default = offline bert-base-uncased
VALID_FRACTION=${VALID_FRACTION:-0.005} # hash split of the train inputs
NUM_SHARDS=${NUM_SHARDS:-4}             # array size = number of groups
WORKERS=${WORKERS:-${SLURM_CPUS_PER_TASK:-8}}  # tokeniser threads per group (one core each); short
                                        # sentences (lm1b) saturate a group at ~5: add groups instead
WORKER_KIND=${WORKER_KIND:-thread}      # thread, or process (worker processes)
PYTHON=${PYTHON:-.venv/bin/python}
EXTRA_ARGS=${EXTRA_ARGS:-""}            # anything else for python -m preprocess
# --------------------------------------------------------------------------------------------

mkdir -p logs
ROLE=${PREPROCESS_ROLE:-launch}

if [[ "$ROLE" == launch ]]; then
    if (( NUM_SHARDS == 1 )); then
        export PREPROCESS_ROLE=single
        exec bash "$0"
    fi
    array_id=$(PREPROCESS_ROLE=group sbatch --parsable --export=ALL --array=0-$((NUM_SHARDS - 1)) "$0")
    merge_id=$(PREPROCESS_ROLE=merge sbatch --parsable --export=ALL --dependency=afterok:${array_id} \
               --cpus-per-task=2 --job-name=semdlm-preprocess-merge "$0")
    echo "submitted group array ${array_id} (${NUM_SHARDS} groups) and merge job ${merge_id}"
    exit 0
fi

args=(--input $INPUT --out "$OUT" --mode "$MODE" --tokenizer "$TOKENIZER" --workers "$WORKERS" --worker-kind "$WORKER_KIND" --no-progress)
[[ -n "$SEQ_LEN" ]] && args+=(--seq-len "$SEQ_LEN")
[[ -n "$TEST_INPUT" ]] && args+=(--test-input $TEST_INPUT)
[[ "$VALID_FRACTION" != 0 ]] && args+=(--valid-fraction "$VALID_FRACTION")

case "$ROLE" in
    single) srun "$PYTHON" -m preprocess "${args[@]}" $EXTRA_ARGS ;;
    group)  srun "$PYTHON" -m preprocess "${args[@]}" $EXTRA_ARGS \
                --shard-index "${SLURM_ARRAY_TASK_ID}" --num-shards "$NUM_SHARDS" ;;
    merge)  srun "$PYTHON" -m preprocess merge --out "$OUT" --num-shards "$NUM_SHARDS" ;;
    *) echo "unknown PREPROCESS_ROLE=$ROLE" >&2; exit 2 ;;
esac

#!/bin/bash
# Preprocess a corpus on SLURM: an array of NUM_SHARDS group jobs, then one merge job.
#
#   sbatch slurm/preprocess.sh                  # uses the variables below
#   INPUT='/data/owt/*.jsonl' OUT=/data/owt_mds MODE=owt NUM_SHARDS=16 sbatch slurm/preprocess.sh
#   sbatch --account=proj --partition=cpu --cpus-per-task=4 --mem=8G --time=1:00:00 slurm/preprocess.sh
#   bash slurm/preprocess.sh                    # from the login node: submits the array and the merge directly
#
# Submit from the repository root (paths are relative to it; logs go to logs/, which the repository
# ships). The first job (this script without PREPROCESS_ROLE) only submits the array and the merge
# job that depends on it, then exits. The array and the merge job get the launching job's
# partition, account, QOS, reservation, time limit, CPUs per task, memory and constraint (so the
# options you give sbatch apply to every job; the merge job uses 1 CPU), plus SBATCH_ARGS.
# Every group writes OUT.groups/group-IIIII-of-NNNNN atomically; a rerun skips groups that are
# already up to date, so requeueing a failed array is cheap.
#
# CPU clusters and small nodes: nothing GPU-specific here; size the jobs with sbatch options
# (--cpus-per-task, --mem); WORKERS follows --cpus-per-task.
#SBATCH --job-name=semdlm-preprocess
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%j.out

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
SBATCH_ARGS=${SBATCH_ARGS:-""}          # more sbatch options for the array and merge jobs
PARSABLE=${PARSABLE:-0}                 # 1: the launcher prints only the id of the job that completes OUT
PYTHON=${PYTHON:-.venv/bin/python}
EXTRA_ARGS=${EXTRA_ARGS:-""}            # anything else for python -m preprocess
# --------------------------------------------------------------------------------------------

ROLE=${PREPROCESS_ROLE:-launch}

# The sbatch options of the launching job that its array and merge jobs must repeat: sbatch reads
# the #SBATCH lines of this file again, not the options the launcher was submitted with.
inherited_options() {
    [[ -n "${SLURM_JOB_ID:-}" ]] || return 0
    local info value
    info=$(scontrol show job -o "$SLURM_JOB_ID")
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< " $info" | head -n 1; }
    value=$(field Partition);   [[ -n "$value" && "$value" != "(null)" ]] && echo "--partition=$value"
    value=$(field Account);     [[ -n "$value" && "$value" != "(null)" ]] && echo "--account=$value"
    value=$(field QOS);         [[ -n "$value" && "$value" != "(null)" ]] && echo "--qos=$value"
    value=$(field Reservation); [[ -n "$value" && "$value" != "(null)" ]] && echo "--reservation=$value"
    value=$(field Features);    [[ -n "$value" && "$value" != "(null)" ]] && echo "--constraint=$value"
    value=$(field TimeLimit);   [[ -n "$value" && "$value" != UNLIMITED && "$value" != "Partition_Limit" ]] \
                                    && echo "--time=$value"
    [[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && echo "--cpus-per-task=$SLURM_CPUS_PER_TASK"
    if [[ -n "${SLURM_MEM_PER_NODE:-}" ]]; then echo "--mem=${SLURM_MEM_PER_NODE}M"
    elif [[ -n "${SLURM_MEM_PER_CPU:-}" ]]; then echo "--mem-per-cpu=${SLURM_MEM_PER_CPU}M"; fi
    return 0
}

if [[ "$ROLE" == launch ]]; then
    if (( NUM_SHARDS < 1 )); then
        echo "slurm/preprocess.sh: error: NUM_SHARDS must be >= 1, got $NUM_SHARDS" >&2
        exit 2
    fi
    if (( NUM_SHARDS == 1 )) && [[ -n "${SLURM_JOB_ID:-}" ]]; then
        export PREPROCESS_ROLE=single
        exec bash "$0"
    fi
    mkdir -p logs
    mapfile -t opts < <(inherited_options)
    # shellcheck disable=SC2206
    opts+=($SBATCH_ARGS)
    if (( NUM_SHARDS == 1 )); then  # from the login node: one job does everything
        last_id=$(PREPROCESS_ROLE=single sbatch --parsable --export=ALL "${opts[@]}" "$0")
        msg="submitted single-group job ${last_id}"
    else
        array_id=$(PREPROCESS_ROLE=group sbatch --parsable --export=ALL "${opts[@]}" --array=0-$((NUM_SHARDS - 1)) \
                   --output='logs/%x-%A_%a.out' "$0")
        last_id=$(PREPROCESS_ROLE=merge sbatch --parsable --export=ALL "${opts[@]}" --cpus-per-task=1 \
                  --dependency=afterok:${array_id} --kill-on-invalid-dep=yes --job-name=semdlm-preprocess-merge "$0")
        msg="submitted group array ${array_id} (${NUM_SHARDS} groups) and merge job ${last_id}"
    fi
    last_id=${last_id%%;*}  # --parsable prints "id;cluster" on federated clusters
    if [[ "$PARSABLE" == 1 ]]; then echo "$last_id"; else echo "$msg"; fi
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
    *) echo "slurm/preprocess.sh: error: unknown PREPROCESS_ROLE=$ROLE" >&2; exit 2 ;;
esac

#!/bin/bash
# The whole pipeline with one command: preprocess -> neighbors -> train -> export -> sample -> eval,
# one SLURM job (or array) per stage, each starting when the one before succeeded (afterok).
#
#   bash slurm/pipeline.sh                                     # the defaults below and of each script
#   bash slurm/pipeline.sh --account=proj --partition=gpu      # sbatch options for every job
#   INPUT=../shared/corpora/lm1b_sample/train.txt MODE=lm1b SEQ_LEN=128 NUM_SHARDS=8 \
#       CONFIG=configs/lm1b_small.yaml KERNEL=semdlm_plus TRAIN_SBATCH="--nodes=4" bash slurm/pipeline.sh
#   STAGES="train export sample eval" bash slurm/pipeline.sh  # only these stages (the others' outputs exist)
#
# Run it from the repository root on a login node (it only submits jobs, prints their ids and
# exits; `bash`, not `sbatch`). Each stage is its own script in slurm/ with its GPU defaults; the
# variables below choose the artifact directories and pass per-stage arguments, every other
# variable of the stage scripts (INPUT, MODE, NUM_SHARDS, K_MAX, CONFIG, KERNEL, LAUNCH, JUDGE,
# STEPS, NUM_SAMPLES, PYTHON, ...) reaches them unchanged through the environment.
#
# The *_SBATCH variables are split at spaces (an option's value cannot contain one).
#
# CPU cluster (what tests/slurm runs): the GPU stages need --gpus-per-node=0, e.g.
#   TRAIN_SBATCH="--nodes=1 --gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1 --mem=8G"
#   SAMPLE_SBATCH="--gpus-per-node=0 --cpus-per-task=1 --mem=4G" EVAL_SBATCH="$SAMPLE_SBATCH"
# The training job requeues itself at its time limit; the export starts when it has finished.
# If a stage fails, the jobs after it are cancelled (--kill-on-invalid-dep=yes); fix the cause and
# rerun with STAGES set to the remaining stages (finished stages print "up to date" anyway).
#
# The kernel study (many runs, each trained, exported and evaluated) chains its own jobs the same way:
#   python -m pipeline.study SPEC --out DIR --slurm --sbatch "--account=proj"   (docs/study.md)

set -euo pipefail

# ---- variables users set ------------------------------------------------------------------
STAGES=${STAGES:-"preprocess neighbors train export sample eval"}
PREPROCESSED=${PREPROCESSED:-artifacts/preprocessed}   # preprocess artifact
NEIGHBORS=${NEIGHBORS:-artifacts/neighbors}            # neighbor_index artifact
RUN_DIR=${RUN_DIR:-runs/pipeline}                      # training run
EXPORT=${EXPORT:-exports/pipeline}                     # export of RUN_DIR
SAMPLES_OUT=${SAMPLES_OUT:-artifacts/samples}          # samples of EXPORT
EVAL_OUT=${EVAL_OUT:-artifacts/eval}                   # evaluation report (scores SAMPLES_OUT)
PREPROCESS_ARGS=${PREPROCESS_ARGS:-""}                 # EXTRA_ARGS of each stage
NEIGHBORS_ARGS=${NEIGHBORS_ARGS:-""}
TRAIN_ARGS=${TRAIN_ARGS:-""}                           # key=value overrides, e.g. "max_steps=1000"
EXPORT_ARGS=${EXPORT_ARGS:-""}
SAMPLE_ARGS=${SAMPLE_ARGS:-""}
EVAL_ARGS=${EVAL_ARGS:-""}
PREPROCESS_SBATCH=${PREPROCESS_SBATCH:-""}             # sbatch options of each stage (after "$@")
NEIGHBORS_SBATCH=${NEIGHBORS_SBATCH:-""}
TRAIN_SBATCH=${TRAIN_SBATCH:-""}
EXPORT_SBATCH=${EXPORT_SBATCH:-""}
SAMPLE_SBATCH=${SAMPLE_SBATCH:-""}
EVAL_SBATCH=${EVAL_SBATCH:-""}
# --------------------------------------------------------------------------------------------

die() { echo "slurm/pipeline.sh: error: $*" >&2; exit 2; }
[[ -f slurm/pipeline.sh && -f pipeline/train.py ]] || die "run it from the repository root (bash slurm/pipeline.sh)"
command -v sbatch > /dev/null || die "sbatch not found: run it on a SLURM login node"
known="preprocess neighbors train export sample eval"
for stage in $STAGES; do
    [[ " $known " == *" $stage "* ]] || die "unknown stage '$stage' in STAGES (known: $known)"
done
wanted() { [[ " $STAGES " == *" $1 "* ]]; }

mkdir -p logs
common=("$@")
last=""   # the job the next stage waits for
submit() {  # submit STAGE_NAME SBATCH_OPTIONS_STRING SCRIPT [VAR=value ...]
    local name=$1 stage_opts=$2 script=$3 id
    shift 3
    local dep=()
    [[ -n "$last" ]] && dep=(--dependency="afterok:$last" --kill-on-invalid-dep=yes)
    # shellcheck disable=SC2086
    id=$(env "$@" sbatch --parsable "${common[@]}" $stage_opts "${dep[@]}" "$script") || die "sbatch of $name failed"
    last=${id%%;*}
    echo "$name: job $last"
}

if wanted preprocess; then
    # The launcher runs here (not as a job of its own) and submits the group array and the merge
    # job; the next stage waits for the merge.
    id=$(env -u SLURM_JOB_ID OUT="$PREPROCESSED" EXTRA_ARGS="$PREPROCESS_ARGS" PARSABLE=1 \
         SBATCH_ARGS="${common[*]} $PREPROCESS_SBATCH" bash slurm/preprocess.sh) \
         || die "submitting the preprocess jobs failed"
    last=$id
    echo "preprocess: job $last (merge; the group array runs before it)"
fi
wanted neighbors && submit neighbors "$NEIGHBORS_SBATCH" slurm/neighbors.sh \
    PREPROCESSED="$PREPROCESSED" OUT="$NEIGHBORS" EXTRA_ARGS="$NEIGHBORS_ARGS"
wanted train && submit train "$TRAIN_SBATCH" slurm/train.sh \
    DATA="$PREPROCESSED" NEIGHBORS="$NEIGHBORS" RUN_DIR="$RUN_DIR" EXTRA_ARGS="$TRAIN_ARGS"
wanted export && submit export "$EXPORT_SBATCH" slurm/export.sh \
    RUN_DIR="$RUN_DIR" OUT="$EXPORT" EXTRA_ARGS="$EXPORT_ARGS"
wanted sample && submit sample "$SAMPLE_SBATCH" slurm/sample.sh \
    MODEL="$EXPORT" OUT="$SAMPLES_OUT" SEQ_LEN= EXTRA_ARGS="$SAMPLE_ARGS"
wanted eval && submit eval "$EVAL_SBATCH" slurm/eval.sh \
    MODEL="$EXPORT" OUT="$EVAL_OUT" SAMPLES="$SAMPLES_OUT" SEQ_LEN= EXTRA_ARGS="$EVAL_ARGS"
echo "last job: $last (squeue --me; logs in logs/)"

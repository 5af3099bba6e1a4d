#!/bin/bash
# Multi-node training on SLURM: 8 GPUs per node, resumable, requeued at the time limit.
#
#   sbatch --nodes=4 slurm/train.sh
#   CONFIG=configs/owt_small.yaml DATA=/data/owt_mds NEIGHBORS=/data/owt_nn RUN_DIR=runs/owt \
#       KERNEL=semdlm_plus sbatch --nodes=8 slurm/train.sh
#   sbatch --nodes=1 --gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1 --mem=8G slurm/train.sh   # CPU (gloo)
#   CONFIG=configs/my_streams.yaml DATA="" sbatch --nodes=2 slurm/train.sh   # data.streams of the config
#
# Submit from the repository root (logs go to logs/, which the repository ships). The ranks per
# node follow --ntasks-per-node, the GPUs per node follow --gpus-per-node (0: a CPU cluster, the
# ranks use gloo); GPUS_PER_NODE / TASKS_PER_NODE override both.
#
# Ten minutes before the time limit SLURM signals this batch shell (USR1, --signal=B:USR1@600); the
# trap touches $RUN_DIR/STOP, every rank sees it at the next step (rank 0 checks, the flag is
# all-reduced), the run checkpoints and exits 0, and the job requeues itself (scontrol requeue). The
# requeued job (SLURM_RESTART_COUNT=1, 2, ...) finds the checkpoint in $RUN_DIR and resumes it
# exactly. The job stops requeueing once $RUN_DIR/finished.json exists. SLURM delivers the signal
# up to 30 s late (it checks time limits every 30 s) and a requeued job waits for its old job
# credential to expire (AuthInfo cred_expire, 120 s by default) before it starts again; keep the
# warning time above one step plus a checkpoint plus a minute, and keep the "B:" (the signal is
# for this shell; sent to the ranks instead, they would checkpoint and exit but nothing requeues).
#
# Two ways to start the ranks (LAUNCH=...):
#   srun      (default) one task per GPU; pipeline/train.py numbers the ranks from SLURM_NODEID/LOCALID/
#             NTASKS (node-cyclic: a run's losses do not depend on its node count; docs/slurm.md,
#             Multi-node). No ssh/pdsh needed.
#   deepspeed the DeepSpeed launcher with a hostfile built from the allocation (needs passwordless
#             ssh + pdsh between the nodes, as DeepSpeed's multi-node launcher always does; on one
#             node it starts the ranks locally, no ssh).
#SBATCH --job-name=semdlm-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out

set -euo pipefail
stop_requested=0
trap 'stop_requested=1' USR1  # first of all: a warning that comes while the script starts is kept

# ---- variables users set ------------------------------------------------------------------
CONFIG=${CONFIG:-configs/lm1b_small.yaml}
DS_CONFIG=${DS_CONFIG:-ds_configs/zero2.json}
DATA=${DATA-artifacts/lm1b}                # preprocess artifact (empty: the config's data.streams)
NEIGHBORS=${NEIGHBORS-artifacts/lm1b_nn}   # neighbor_index artifact (not needed for mask/uniform; empty: none)
KERNEL=${KERNEL:-""}                       # empty: the config's kernel
RUN_DIR=${RUN_DIR:-runs/lm1b_small}
LAUNCH=${LAUNCH:-srun}                     # srun | deepspeed
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_PER_NODE:-8}}  # from --gpus-per-node; 0 on a CPU cluster
GPUS_PER_NODE=${GPUS_PER_NODE##*:}         # --gpus-per-node=a100:8 -> 8
TASKS_PER_NODE=${TASKS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-$GPUS_PER_NODE}}  # ranks per node
PYTHON=${PYTHON:-.venv/bin/python}
DEEPSPEED=${DEEPSPEED:-$(dirname "$PYTHON")/deepspeed}  # the launcher of LAUNCH=deepspeed
EXTRA_ARGS=${EXTRA_ARGS:-""}               # key=value overrides, e.g. "max_steps=1000 lr=2e-4"
STUDY_DIR=${STUDY_DIR:-""}                 # set by pipeline.study --slurm: stamp this study's cell
STUDY_CELL=${STUDY_CELL:-""}               # when the run has finished
# --------------------------------------------------------------------------------------------

mkdir -p "$RUN_DIR"

# Rendezvous: the first node of the allocation, a port derived from the job id.
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}

# NCCL: these defaults suit InfiniBand clusters; adjust to your fabric.
#   NCCL_IB_HCA / NCCL_SOCKET_IFNAME pick the network (e.g. NCCL_SOCKET_IFNAME=ib0 or ^lo,docker);
#   NCCL_ASYNC_ERROR_HANDLING=1 turns a hung collective into an error (the job then fails and is
#   requeued by the site's policy) instead of hanging until the time limit;
#   NCCL_DEBUG=WARN (INFO while debugging the topology).
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}
[[ -n "${NCCL_SOCKET_IFNAME:-}" ]] && export NCCL_SOCKET_IFNAME
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-4}}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

args=(--ds_config "$DS_CONFIG" --config "$CONFIG" --run-dir "$RUN_DIR")
[[ -n "$DATA" ]] && args+=(--preprocessed "$DATA")
[[ -n "$NEIGHBORS" && -d "$NEIGHBORS" ]] && args+=(--neighbors "$NEIGHBORS")
[[ -n "$KERNEL" ]] && args+=(--kernel "$KERNEL")
# shellcheck disable=SC2206
args+=($EXTRA_ARGS)

case "$LAUNCH" in srun|deepspeed) ;; *) echo "slurm/train.sh: error: LAUNCH must be srun or deepspeed, got '$LAUNCH'" >&2; exit 2 ;; esac
if ! [[ "$TASKS_PER_NODE" =~ ^[1-9][0-9]*$ ]]; then
    echo "slurm/train.sh: error: TASKS_PER_NODE must be a positive integer, got '$TASKS_PER_NODE'" >&2
    exit 2
fi
echo "$(date "+%F %T"): job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}:" \
     "${SLURM_JOB_NUM_NODES:-1} node(s) x ${TASKS_PER_NODE} ranks, ${GPUS_PER_NODE} GPUs per node, LAUNCH=${LAUNCH}"

on_time_limit() {
    echo "$(date "+%F %T"): time limit approaching: asking the run to checkpoint and exit"
    stop_requested=1
    touch "$RUN_DIR/STOP"
}
rm -f "$RUN_DIR/STOP"  # a request of an earlier job, already honoured
trap on_time_limit USR1
[[ $stop_requested == 1 ]] && on_time_limit

if [[ "$LAUNCH" == srun ]]; then
    gpu_opts=()
    (( GPUS_PER_NODE > 0 )) && gpu_opts=(--gpus-per-node="$GPUS_PER_NODE")
    srun --kill-on-bad-exit=1 --ntasks-per-node="$TASKS_PER_NODE" "${gpu_opts[@]}" --cpu-bind=cores \
        "$PYTHON" pipeline/train.py "${args[@]}" &
elif (( ${SLURM_JOB_NUM_NODES:-1} == 1 )); then
    # One node: the launcher starts the ranks itself. (With a hostfile it would insist on ssh even
    # to the node it runs on.)
    "$DEEPSPEED" --num_nodes 1 --num_gpus "$TASKS_PER_NODE" --master_addr "$MASTER_ADDR" \
        --master_port "$MASTER_PORT" pipeline/train.py "${args[@]}" &
else
    hostfile="$RUN_DIR/hostfile.$SLURM_JOB_ID"
    scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/ slots=$TASKS_PER_NODE/" > "$hostfile"
    "$DEEPSPEED" --hostfile "$hostfile" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
        --launcher pdsh pipeline/train.py "${args[@]}" &
fi
pid=$!
# `wait` returns early when the trap fires; keep waiting for the ranks to checkpoint and exit. The
# trainer removes a STOP file it finds when it starts (a request of the previous job), so a signal
# that arrives while the ranks are still starting is repeated until they have exited.
while kill -0 "$pid" 2>/dev/null; do
    if [[ $stop_requested == 1 ]]; then
        [[ -f "$RUN_DIR/STOP" ]] || touch "$RUN_DIR/STOP"
        sleep 1 &
        wait $! || true
    else
        wait "$pid" || true  # returns when the ranks exit, or early when the trap fires
    fi
done
wait "$pid" && status=0 || status=$?

if [[ -f "$RUN_DIR/finished.json" ]]; then
    echo "$(date "+%F %T"): training finished: $(cat "$RUN_DIR/finished.json")"
    if [[ -n "$STUDY_CELL" ]]; then
        "$PYTHON" -m pipeline.studies.stamp "${STUDY_DIR:?set STUDY_DIR with STUDY_CELL}" "$STUDY_CELL" \
            --seconds "$SECONDS"
    fi
elif [[ $stop_requested == 1 && $status == 0 ]]; then
    echo "$(date "+%F %T"): checkpointed before the time limit; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
else
    echo "$(date "+%F %T"): training exited with status $status" >&2
    exit "$status"
fi

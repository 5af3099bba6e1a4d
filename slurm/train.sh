#!/bin/bash
# Multi-node training on SLURM: 8 GPUs per node, resumable, requeued at the time limit.
#
#   sbatch --nodes=4 slurm/train.sh
#   CONFIG=configs/owt_small.yaml DATA=/data/owt_mds NEIGHBORS=/data/owt_nn RUN_DIR=runs/owt \
#       KERNEL=semdlm_plus sbatch --nodes=8 slurm/train.sh
#
# Ten minutes before the time limit SLURM signals this batch shell (USR1); the trap touches
# $RUN_DIR/STOP, every rank sees it at the next step (rank 0 checks, the flag is all-reduced), the
# run checkpoints and exits 0, and the job requeues itself. The requeued job finds the checkpoint
# in $RUN_DIR and resumes it exactly. The job stops requeueing once $RUN_DIR/finished.json exists.
#
# Two ways to start the ranks (LAUNCH=...):
#   srun      (default) one task per GPU; SLURM numbers the ranks (SLURM_PROCID/LOCALID/NTASKS) and
#             pipeline/train.py maps them to RANK/LOCAL_RANK/WORLD_SIZE. No ssh/pdsh needed.
#   deepspeed the DeepSpeed launcher with a hostfile built from the allocation (needs passwordless
#             ssh + pdsh between the nodes, as DeepSpeed's multi-node launcher always does).
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

# ---- variables users set ------------------------------------------------------------------
CONFIG=${CONFIG:-configs/lm1b_small.yaml}
DS_CONFIG=${DS_CONFIG:-ds_configs/zero2.json}
DATA=${DATA:-artifacts/lm1b}               # preprocess artifact
NEIGHBORS=${NEIGHBORS:-artifacts/lm1b_nn}  # neighbor_index artifact (not needed for mask/uniform)
KERNEL=${KERNEL:-""}                       # empty: the config's kernel
RUN_DIR=${RUN_DIR:-runs/lm1b_small}
LAUNCH=${LAUNCH:-srun}                     # srun | deepspeed
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PYTHON=${PYTHON:-.venv/bin/python}
EXTRA_ARGS=${EXTRA_ARGS:-""}               # key=value overrides, e.g. "max_steps=1000 lr=2e-4"
# --------------------------------------------------------------------------------------------

mkdir -p logs "$RUN_DIR"

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
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

args=(--ds_config "$DS_CONFIG" --config "$CONFIG" --run-dir "$RUN_DIR" --preprocessed "$DATA")
[[ -d "$NEIGHBORS" ]] && args+=(--neighbors "$NEIGHBORS")
[[ -n "$KERNEL" ]] && args+=(--kernel "$KERNEL")
# shellcheck disable=SC2206
args+=($EXTRA_ARGS)

stop_requested=0
on_time_limit() {
    echo "$(date): time limit approaching: asking the run to checkpoint and exit"
    stop_requested=1
    touch "$RUN_DIR/STOP"
}
trap on_time_limit USR1

if [[ "$LAUNCH" == srun ]]; then
    srun --kill-on-bad-exit=1 --ntasks-per-node="$GPUS_PER_NODE" --gpus-per-node="$GPUS_PER_NODE" \
        --cpu-bind=cores "$PYTHON" pipeline/train.py "${args[@]}" &
else
    hostfile="$RUN_DIR/hostfile.$SLURM_JOB_ID"
    scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/ slots=$GPUS_PER_NODE/" > "$hostfile"
    "${DEEPSPEED:-.venv/bin/deepspeed}" --hostfile "$hostfile" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
        --launcher pdsh pipeline/train.py "${args[@]}" &
fi
pid=$!
# `wait` returns early when the trap fires; keep waiting for the ranks to checkpoint and exit.
status=0
while true; do
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null || break
done

if [[ -f "$RUN_DIR/finished.json" ]]; then
    echo "$(date): training finished: $(cat "$RUN_DIR/finished.json")"
elif [[ $stop_requested == 1 && $status == 0 ]]; then
    echo "$(date): checkpointed before the time limit; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
else
    echo "$(date): training exited with status $status" >&2
    exit "$status"
fi

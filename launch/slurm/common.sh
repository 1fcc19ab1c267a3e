# Sourced by the stage scripts: rendezvous from SLURM variables, environment knobs, and the
# stop / requeue protocol (see shared/training/preemption.py).
#
# Inputs (environment): STAGE (e.g. pretrain_mae/main.py), RUN_DIR (the run's output_dir),
# ACCELERATE_CONFIG (default: launch/accelerate/multi_node.yaml), GPUS_PER_NODE (default 8),
# STAGE_ARGS (an array of arguments for the stage), LAUNCHER (default: accelerate launch).

set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-$(pwd)}"

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-launch/accelerate/multi_node.yaml}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT

# Knobs that matter at scale; adjust to the cluster's fabric.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}           # per process; DataLoader workers use their own
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead rank fails the job, no hang
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# export NCCL_SOCKET_IFNAME=ib0 NCCL_IB_HCA=mlx5     # InfiniBand clusters: name the interfaces
export PYTHONUNBUFFERED=1

mkdir -p "$RUN_DIR"
rm -f "$RUN_DIR/STOP" "$RUN_DIR/REQUEUE"

# SLURM sends USR1 to this batch shell ahead of the time limit (#SBATCH --signal=B:USR1@...).
# A launcher does not forward every signal to its workers, so the request travels as a file that
# every rank checks; the run saves a complete state and leaves $RUN_DIR/REQUEUE.
trap 'echo "$(date): stop requested, asking the run to save and exit"; touch "$RUN_DIR/STOP"' USR1 TERM

LAUNCHER=${LAUNCHER:-accelerate launch}
# shellcheck disable=SC2016  # $SLURM_NODEID must expand inside each task, not here
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
  exec '"$LAUNCHER"' --config_file "'"$ACCELERATE_CONFIG"'" \
    --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" \
    --main_process_ip "'"$MASTER_ADDR"'" --main_process_port "'"$MASTER_PORT"'" \
    --num_processes $(( SLURM_NNODES * '"$GPUS_PER_NODE"' )) \
    "$@"' _ "$STAGE" --resume auto "${STAGE_ARGS[@]}" &
SRUN_PID=$!
# `wait` returns early when a trapped signal arrives: keep waiting for the run to save and exit
while true; do
  wait "$SRUN_PID"
  STATUS=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break
done

if [ -f "$RUN_DIR/REQUEUE" ]; then
  echo "$(date): state saved at step $(cat "$RUN_DIR/REQUEUE"); requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$STATUS"

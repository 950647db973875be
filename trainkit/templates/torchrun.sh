#!/usr/bin/env bash
# trainkit under torchrun, on one node or many (run it on every node with the same RUN_ID).
#
#   NPROC=4 launch/torchrun.sh recipes/digits_mlp.yaml --trainer.max_epochs=5
#   # two nodes, static rendezvous: same RUN_ID and MASTER_ADDR on both, NODE_RANK 0 and 1
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 RUN_ID=exp1 NPROC=8 launch/torchrun.sh R.yaml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 RUN_ID=exp1 NPROC=8 launch/torchrun.sh R.yaml
#   # or c10d rendezvous: nodes join in any order
#   NNODES=2 RDZV_ENDPOINT=node0:29400 RUN_ID=exp1 NPROC=8 launch/torchrun.sh R.yaml
#
# MAX_RESTARTS=N restarts failed workers; they resume from the run dir's last.ckpt
# (resume: auto), since RUN_ID names the run dir (runs/<experiment>/torchrun-<RUN_ID>).
# `trainkit launch --torchrun` runs this script with these variables set.
set -euo pipefail

RECIPE="${1:?usage: [NPROC=N NNODES=N ...] torchrun.sh RECIPE.yaml [--key=value overrides...]}"
shift
NPROC="${NPROC:-1}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
MAX_RESTARTS="${MAX_RESTARTS:-0}"
if [ -z "${RUN_ID:-}" ]; then
  if [ "$NNODES" != 1 ]; then
    echo "torchrun.sh: set RUN_ID to the same value on every node (it names the shared run dir)" >&2
    exit 2
  fi
  RUN_ID="$(date +%Y%m%d-%H%M%S)"
fi

# A restarted attempt must not dial the previous attempt's ports kept in the shared
# rendezvous store (pytorch issue 135712: "Gloo connectFullMesh ... Connection refused").
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

if [ -n "${RDZV_ENDPOINT:-}" ]; then
  rdzv=(--rdzv-backend=c10d "--rdzv-endpoint=$RDZV_ENDPOINT")
else
  rdzv=("--node-rank=$NODE_RANK" "--master-addr=$MASTER_ADDR" "--master-port=$MASTER_PORT")
fi

exec "${PYTHON:-python3}" -m torch.distributed.run \
  "--nnodes=$NNODES" "--nproc-per-node=$NPROC" "--max-restarts=$MAX_RESTARTS" "--rdzv-id=$RUN_ID" "${rdzv[@]}" \
  -m trainkit fit --config "$RECIPE" "--trainer.num_nodes=$NNODES" "--trainer.devices=$NPROC" "$@"

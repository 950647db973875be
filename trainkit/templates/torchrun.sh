#!/usr/bin/env bash
# trainkit under torchrun, on one node or many (run it on every node with the same RUN_ID).
#
#   NPROC=4 launch/torchrun.sh recipes/digits_mlp.yaml --trainer.max_epochs=5
#   # two nodes: the same RUN_ID, NNODES and rendezvous endpoint (a host:port on one of the
#   # nodes, MASTER_ADDR:MASTER_PORT by default) on both; they join in any order
#   NNODES=2 MASTER_ADDR=node0 RUN_ID=exp1 NPROC=8 launch/torchrun.sh R.yaml   # on node0 and node1
#
# The rendezvous is always c10d: torchrun's static rendezvous hands restarted workers the
# agent's store, whose keys from the failed attempt make gloo dial dead ports ("Gloo
# connectFullMesh ... Connection refused", pytorch issue 135712); c10d with
# TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives every attempt a fresh store.
#
# MAX_RESTARTS=N restarts failed workers; they resume from the run dir's last.ckpt
# (resume: auto), since RUN_ID names the run dir (runs/<experiment>/torchrun-<RUN_ID>).
# `trainkit launch --torchrun` runs this script with these variables set.
set -euo pipefail

RECIPE="${1:?usage: [NPROC=N NNODES=N ...] torchrun.sh RECIPE.yaml [--key=value overrides...]}"
shift
NPROC="${NPROC:-1}"
NNODES="${NNODES:-1}"
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

export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
ENDPOINT="${RDZV_ENDPOINT:-$MASTER_ADDR:$MASTER_PORT}"

exec "${PYTHON:-python3}" -m torch.distributed.run \
  "--nnodes=$NNODES" "--nproc-per-node=$NPROC" "--max-restarts=$MAX_RESTARTS" "--rdzv-id=$RUN_ID" \
  --rdzv-backend=c10d "--rdzv-endpoint=$ENDPOINT" \
  -m trainkit fit --config "$RECIPE" "--trainer.num_nodes=$NNODES" "--trainer.devices=$NPROC" "$@"

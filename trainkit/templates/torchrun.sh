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
#
# Python: $PYTHON if set, else the interpreter of the install this script ships with (its
# virtual environment, or a python3 on PATH that imports this same trainkit). Each process
# gets OMP_NUM_THREADS = the node's cores / NPROC (torchrun would give 1) unless set, and
# TORCH_NCCL_ASYNC_ERROR_HANDLING=1: a rank whose NCCL collective fails or times out tears its
# process down, so torchrun restarts the workers instead of the job hanging.
# DRY_RUN=1 prints the torchrun command line (with its environment) instead of running it.
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

# the trainkit package this script belongs to (launch/ links into it)
PKG="$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"
ships_with() {  # does interpreter $1 import the trainkit at $PKG?
  "$1" -c 'import importlib.util as u, os, sys
s = u.find_spec("trainkit")
sys.exit(s is None or os.path.realpath(os.path.dirname(s.origin)) != os.path.realpath(sys.argv[1]))' "$PKG" 2>/dev/null
}
if [ -z "${PYTHON:-}" ]; then
  # a venv's <venv>/lib/pythonX.Y/site-packages/trainkit, a checkout's .venv, then python3 on PATH
  VENV="$(cd "$PKG/../../../.." 2>/dev/null && pwd || true)"
  for candidate in "$VENV/bin/python" "$(dirname "$PKG")/.venv/bin/python" python3; do
    if command -v "$candidate" >/dev/null 2>&1 && ships_with "$candidate"; then
      PYTHON="$candidate"
      break
    fi
  done
  if [ -z "${PYTHON:-}" ]; then
    echo "torchrun.sh: no Python here imports the trainkit in $PKG; set PYTHON=/path/to/its/python" >&2
    exit 2
  fi
fi

CORES="$(nproc 2>/dev/null || echo 1)"
THREADS=$(( CORES / NPROC ))
ENVIRONMENT=(
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
  "OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}"
  "TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
)
ENDPOINT="${RDZV_ENDPOINT:-$MASTER_ADDR:$MASTER_PORT}"
COMMAND=(
  "$PYTHON" -m torch.distributed.run
  "--nnodes=$NNODES" "--nproc-per-node=$NPROC" "--max-restarts=$MAX_RESTARTS" "--rdzv-id=$RUN_ID"
  --rdzv-backend=c10d "--rdzv-endpoint=$ENDPOINT"
  -m trainkit fit --config "$RECIPE" "--trainer.num_nodes=$NNODES" "--trainer.devices=$NPROC" "$@"
)
if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' env "${ENVIRONMENT[@]}" "${COMMAND[@]}"
  echo
  exit 0
fi
exec env "${ENVIRONMENT[@]}" "${COMMAND[@]}"

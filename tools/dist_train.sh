#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG NPROC [tools/train.py args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
# With NPROC=1 on one node it runs a plain (non-distributed) process.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG NPROC [train.py args...]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

if [ "$NPROC" = 1 ] && [ "$NNODES" = 1 ]; then
    exec "$PYTHON" "$ROOT/tools/train.py" "$CONFIG" --launcher none "${@:3}"
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$PORT" \
    --nproc_per_node="$NPROC" \
    "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"

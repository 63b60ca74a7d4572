#!/bin/bash
# Plain hosts (no scheduler): run this on every node of a cluster config, with NODE_RANK set to the
# node's index in the config's hosts list (hosts[0] is node 0, the master). torchrun waits until all
# nodes have joined, so the order in which they start does not matter.
#
#   NODE_RANK=0 launch/hosts.sh configs/cluster/a100x16.yaml [TRAIN_ARGS...]    # on hosts[0]
#   NODE_RANK=1 launch/hosts.sh configs/cluster/a100x16.yaml [TRAIN_ARGS...]    # on hosts[1]
#
# Environment: MASTER_ADDR overrides the config's master_addr / hosts[0], MASTER_PORT its master_port;
# PPLLAVA names the launcher (default `ppllava` on PATH, e.g. from an activated venv).
# To see every node's command first: ppllava launch --cluster CLUSTER_YAML --dry-run -- TRAIN_ARGS...
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: NODE_RANK=N launch/hosts.sh CLUSTER_YAML [TRAIN_ARGS...]" >&2
    exit 2
fi
: "${NODE_RANK:?set NODE_RANK to the index of this node in the hosts list of the config (0 is the master)}"
CLUSTER=$1
shift

# The launcher imports torch before the config's setup lines run (e.g. CANN's set_env.sh), so keep torch
# from auto-loading device extensions (torch_npu) in it; the 910B config turns it back on for training.
exec env TORCH_DEVICE_BACKEND_AUTOLOAD=0 "${PPLLAVA:-ppllava}" launch --cluster "$CLUSTER" \
    --node-rank "$NODE_RANK" ${MASTER_ADDR:+--master-addr "$MASTER_ADDR"} \
    ${MASTER_PORT:+--master-port "$MASTER_PORT"} -- "$@"

"""`ppllava launch`: start `ppllava train` under torchrun on one node of a cluster config, or print every node's line."""

from __future__ import annotations

import argparse
import sys

from ppllava import launch as launching

EPILOG = """\
train arguments go after `--` and reach `ppllava train` verbatim.

The master address is, in order: --master-addr, master_addr in the config, hosts[0] in the config,
127.0.0.1 for a one-node cluster. The node rank is --node-rank, else SLURM_NODEID, else 0 for a
one-node cluster. The config's env (plus PPLLAVA_DIST_BACKEND and PPLLAVA_DEVICE) overrides the
inherited environment; its setup lines (e.g. CANN's set_env.sh) run in bash before torchrun.
Ascend: torch auto-loads torch_npu, which fails before set_env.sh is sourced, so start the launcher
with TORCH_DEVICE_BACKEND_AUTOLOAD=0 (launch/slurm.sbatch and launch/hosts.sh do); the 910B config
turns it back on for the training processes.

examples:
  # see what every node would run (a multi-node line without a master address reads $MASTER_ADDR)
  ppllava launch --cluster configs/cluster/910bx32.yaml --dry-run -- --config configs/train/llava-video-7b.yaml

  # Slurm: one launcher per node; the script finds the master address, SLURM_NODEID gives the rank
  sbatch --nodes=4 launch/slurm.sbatch configs/cluster/910bx32.yaml --config configs/train/llava-video-7b.yaml
  #   which runs on every node:
  #   ppllava launch --cluster configs/cluster/910bx32.yaml --master-addr "$MASTER_ADDR" -- --config configs/train/llava-video-7b.yaml

  # plain hosts (hosts: in the config, hosts[0] is the master): on node i run
  ppllava launch --cluster configs/cluster/a100x16.yaml --node-rank 1 -- --config configs/train/llava-video-7b.yaml
  #   or: NODE_RANK=1 launch/hosts.sh configs/cluster/a100x16.yaml --config configs/train/llava-video-7b.yaml
"""


def add_parser(sub) -> None:
    p = sub.add_parser("launch", help="run `ppllava train` on a multi-node cluster with torchrun (or print the commands)",
                       description="Start torchrun for this node of a cluster config (configs/cluster/*.yaml): "
                                   "procs_per_node ranks running `ppllava train`, with the config's environment "
                                   "and setup lines. With --dry-run, print every node's exact shell line instead.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", required=True, metavar="FILE", help="cluster config YAML, e.g. configs/cluster/a100x16.yaml")
    p.add_argument("--dry-run", action="store_true",
                   help="print each node's command (all nodes, or only --node-rank) and run nothing")
    p.add_argument("--node-rank", type=int, default=None, metavar="N", help="this node's rank (default: SLURM_NODEID)")
    p.add_argument("--master-addr", default=None, metavar="ADDR", help="address of node 0 (overrides the config)")
    p.add_argument("--master-port", type=int, default=None, metavar="P", help="rendezvous port (overrides the config)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, metavar="-- TRAIN_ARGS",
                   help="arguments for `ppllava train`, after `--`")
    p.set_defaults(run=run)


def _train_args(args) -> list[str]:
    rest = list(args.train_args)
    return rest[1:] if rest[:1] == ["--"] else rest


def header(cluster: launching.ClusterConfig, command: launching.NodeCommand) -> str:
    host = f" (host {command.host})" if command.host else ""
    return (f"# node {command.node_rank}/{command.nodes}{host}: world size {command.world_size}, "
            f"backend {cluster.backend}, device {cluster.device}")


def dry_run(cluster: launching.ClusterConfig, args, train_args: list[str]) -> int:
    addr = launching.resolve_master_addr(cluster, args.master_addr)
    commands = launching.all_node_commands(cluster, addr, train_args, args.master_port)
    if args.node_rank is not None:
        commands = [commands[launching.resolve_node_rank(cluster, args.node_rank)]]
    print(f"# cluster {cluster.name} ({args.cluster}): {cluster.nodes} node(s) x {cluster.procs_per_node} procs, "
          f"master {addr or '$MASTER_ADDR'}")
    if addr is None:
        print("# no master address given: set MASTER_ADDR to node 0's address before running these lines, "
              "or pass --master-addr")
    for command in commands:
        print()
        print(header(cluster, command))
        print(command.shell())
    return 0


def run(args) -> int:
    cluster = launching.load_cluster(args.cluster)
    train_args = _train_args(args)
    if args.dry_run:
        return dry_run(cluster, args, train_args)
    addr = launching.require_master_addr(cluster, args.master_addr)
    rank = launching.resolve_node_rank(cluster, args.node_rank)
    command = launching.node_command(cluster, rank, addr, train_args, args.master_port)
    print(f"{header(cluster, command)}\n{command.shell()}", file=sys.stderr, flush=True)
    return launching.run_node(command)

"""Multi-node launch: a cluster config (configs/cluster/*.yaml) -> one torchrun command per node.

Device facts (backend, environment variables, toolkit setup) are data in the YAML; this module only
checks them and assembles commands. Each node runs

    cd WORKDIR && SETUP... && env K=V... python -m torch.distributed.run --nnodes N --node-rank R
        --nproc-per-node P --master-addr A --master-port PORT -m ppllava train TRAIN_ARGS...

and `ppllava launch --dry-run` prints exactly the line that `ppllava launch` runs through bash (which
runs it with `exec` before `env`, so that torchrun replaces bash and receives signals directly).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .errors import read_yaml

DEVICES = ("cpu", "cuda", "npu")
BACKENDS = ("gloo", "nccl", "hccl")
DEFAULT_MASTER_PORT = 29500
LOCAL_MASTER_ADDR = "127.0.0.1"  # single-node clusters need no master address
ENTRY = ("-m", "ppllava", "train")  # what torchrun starts on every rank
LAUNCHER_ENV = ("PPLLAVA_DIST_BACKEND", "PPLLAVA_DEVICE")  # set from backend/device, not from `env`

_REQUIRED = ("nodes", "procs_per_node", "device", "backend")
_OPTIONAL = ("name", "master_addr", "master_port", "hosts", "env", "setup", "workdir")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ShellVar(str):
    """An argument left unquoted in `NodeCommand.shell()`, for the shell to expand."""


# dry runs of multi-node clusters with no known master address print this in its place
MASTER_ADDR_PLACEHOLDER = ShellVar('"${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"')


@dataclass(frozen=True)
class ClusterConfig:
    """One cluster: how many nodes and processes, which device and collective backend, its environment."""

    name: str
    nodes: int
    procs_per_node: int
    device: str
    backend: str
    master_addr: str | None = None
    master_port: int = DEFAULT_MASTER_PORT
    hosts: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    workdir: str | None = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclass(frozen=True)
class NodeCommand:
    """What one node runs: torchrun's argv, the environment it adds, and the shell steps before it."""

    node_rank: int
    nodes: int
    world_size: int
    argv: tuple[str, ...]
    env: dict[str, str]
    setup: tuple[str, ...] = ()
    workdir: str | None = None
    host: str | None = None

    def shell(self, exec_last: bool = False) -> str:
        """One copy-pasteable bash line: cd, the setup lines, then `env K=V ... argv`.

        exec_last=True makes bash `exec` the last step, so torchrun replaces it (what run_node runs).
        """
        steps = [f"cd {shlex.quote(self.workdir)}"] if self.workdir else []
        steps += self.setup
        assignments = [shlex.quote(f"{k}={v}") for k, v in self.env.items()]
        steps.append(" ".join(["exec"] * exec_last + ["env", *assignments, *(_quote(a) for a in self.argv)]))
        return " && ".join(steps)


def _quote(arg: str) -> str:
    return str(arg) if isinstance(arg, ShellVar) else shlex.quote(arg)


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def _integer(path: Path, data: dict, key: str, low: int, high: int | None = None) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise _fail(path, f"{key} must be an integer {bound}, got {value!r}")
    return value


def _text(path: Path, value, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"{key} must be a non-empty string, got {value!r}")
    return value


def _choice(path: Path, data: dict, key: str, choices: Sequence[str]) -> str:
    value = data[key]
    if value not in choices:
        raise _fail(path, f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _strings(path: Path, data: dict, key: str) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise _fail(path, f"{key} must be a list of strings, got {type(value).__name__}")
    return tuple(_text(path, item, f"{key}[{i}]") for i, item in enumerate(value))


def _env(path: Path, data: dict) -> dict[str, str]:
    value = data.get("env") or {}
    if not isinstance(value, dict):
        raise _fail(path, f"env must be a mapping of variable names to values, got {type(value).__name__}")
    env = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise _fail(path, f"env: {name!r} is not a valid environment variable name")
        if name in LAUNCHER_ENV:
            raise _fail(path, f"env: {name} is set by the launcher from device/backend; remove it")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise _fail(path, f"env.{name} must be a string or a number, got {item!r} (quote it)")
        env[name] = str(item)
    return env


def cluster_from_dict(data: Mapping, path: str | Path = "<cluster>") -> ClusterConfig:
    """A checked ClusterConfig from plain data; errors name `path` and the field."""
    path = Path(path)
    if not isinstance(data, dict):
        raise _fail(path, f"expected a mapping of cluster fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL), key=str)
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(map(str, unknown))}; expected {', '.join(_REQUIRED + _OPTIONAL)}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _fail(path, f"missing required key(s) {', '.join(missing)}")
    nodes = _integer(path, data, "nodes", 1)
    hosts = _strings(path, data, "hosts")
    if hosts and len(hosts) != nodes:
        raise _fail(path, f"hosts lists {len(hosts)} host(s) but nodes is {nodes}; hosts[i] is node rank i")
    workdir = data.get("workdir")
    if workdir is not None and not os.path.isabs(_text(path, workdir, "workdir")):
        raise _fail(path, f"workdir must be an absolute path, got {workdir!r}")
    master_addr = data.get("master_addr")
    return ClusterConfig(
        name=_text(path, data.get("name", path.stem), "name"),
        nodes=nodes,
        procs_per_node=_integer(path, data, "procs_per_node", 1),
        device=_choice(path, data, "device", DEVICES),
        backend=_choice(path, data, "backend", BACKENDS),
        master_addr=None if master_addr is None else _text(path, master_addr, "master_addr"),
        master_port=_integer(path, data, "master_port", 1, 65535) if "master_port" in data else DEFAULT_MASTER_PORT,
        hosts=hosts,
        env=_env(path, data),
        setup=_strings(path, data, "setup"),
        workdir=workdir,
    )


def load_cluster(path: str | Path) -> ClusterConfig:
    """Read and check a cluster YAML file (schema: the comment at the top of configs/cluster/*.yaml)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cluster config {path} does not exist (see configs/cluster/)")
    return cluster_from_dict(read_yaml(path), path)


def resolve_master_addr(cluster: ClusterConfig, given: str | None = None) -> str | None:
    """--master-addr, else the config's master_addr, else hosts[0], else localhost for one node, else None."""
    if given:
        return given
    if cluster.master_addr:
        return cluster.master_addr
    if cluster.hosts:
        return cluster.hosts[0]
    return LOCAL_MASTER_ADDR if cluster.nodes == 1 else None


def require_master_addr(cluster: ClusterConfig, given: str | None = None) -> str:
    """resolve_master_addr, or a ValueError saying how to give one."""
    addr = resolve_master_addr(cluster, given)
    if addr is None:
        raise ValueError(f"cluster {cluster.name} has {cluster.nodes} nodes and no master address: pass "
                         f"--master-addr ADDR (launch/slurm.sbatch does), or set master_addr or hosts in its config")
    return addr


def resolve_node_rank(cluster: ClusterConfig, given: int | None = None,
                      environ: Mapping[str, str] = os.environ) -> int:
    """--node-rank, else SLURM_NODEID, else 0 for a single-node cluster; checked against `nodes`."""
    if given is not None:
        rank, source = given, "--node-rank"
    elif "SLURM_NODEID" in environ:
        rank, source = _slurm_int(environ, "SLURM_NODEID"), "SLURM_NODEID"
        allocated = _slurm_int(environ, "SLURM_NNODES") if "SLURM_NNODES" in environ else cluster.nodes
        if allocated != cluster.nodes:
            raise ValueError(f"Slurm allocated {allocated} node(s) but cluster {cluster.name} has {cluster.nodes}: "
                             f"match sbatch --nodes to the cluster config")
    elif cluster.nodes == 1:
        return 0
    else:
        raise ValueError(f"cluster {cluster.name} has {cluster.nodes} nodes: pass --node-rank N "
                         f"(0 is the master), or run under Slurm (SLURM_NODEID)")
    if not 0 <= rank < cluster.nodes:
        raise ValueError(f"{source} {rank} is out of range for cluster {cluster.name} (nodes 0..{cluster.nodes - 1})")
    return rank


def _slurm_int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ValueError(f"{name}={environ[name]!r} is not an integer") from None


def node_command(cluster: ClusterConfig, node_rank: int, master_addr: str, train_args: Sequence[str],
                 master_port: int | None = None) -> NodeCommand:
    """The command node `node_rank` runs: torchrun of `ppllava train TRAIN_ARGS` with the cluster's env."""
    if not 0 <= node_rank < cluster.nodes:
        raise ValueError(f"node rank {node_rank} is out of range for cluster {cluster.name} (nodes 0..{cluster.nodes - 1})")
    port = cluster.master_port if master_port is None else master_port
    if not 1 <= port <= 65535:
        raise ValueError(f"master port must be in 1..65535, got {port}")
    argv = (sys.executable, "-m", "torch.distributed.run",
            "--nnodes", str(cluster.nodes), "--node-rank", str(node_rank),
            "--nproc-per-node", str(cluster.procs_per_node),
            "--master-addr", master_addr, "--master-port", str(port),
            *ENTRY, *train_args)
    env = {**cluster.env, "PPLLAVA_DIST_BACKEND": cluster.backend, "PPLLAVA_DEVICE": cluster.device}
    return NodeCommand(node_rank=node_rank, nodes=cluster.nodes, world_size=cluster.world_size, argv=argv, env=env,
                       setup=cluster.setup, workdir=cluster.workdir,
                       host=cluster.hosts[node_rank] if cluster.hosts else None)


def all_node_commands(cluster: ClusterConfig, master_addr: str | None, train_args: Sequence[str],
                      master_port: int | None = None) -> list[NodeCommand]:
    """Every node's command, for a dry run; an unknown master address becomes MASTER_ADDR_PLACEHOLDER."""
    addr = master_addr or MASTER_ADDR_PLACEHOLDER
    return [node_command(cluster, rank, addr, train_args, master_port) for rank in range(cluster.nodes)]


def run_node(command: NodeCommand) -> int:
    """Run `command.shell()` with bash and return its exit status (128 + N when killed by signal N).

    bash execs torchrun once the setup lines are done, in a process group of its own; SIGINT and
    SIGTERM sent to the launcher (Ctrl-C, scancel) go to that group, and torchrun passes them on to
    its workers and waits for them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT) before it exits.
    """
    child = subprocess.Popen(["bash", "-c", command.shell(exec_last=True)], start_new_session=True)

    def forward(signum, _frame) -> None:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    forwarded = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - status if status < 0 else status

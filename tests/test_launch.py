"""`ppllava launch`: cluster configs -> per-node torchrun lines, checked without running torchrun."""

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ppllava import launch
from ppllava.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "configs" / "cluster"
NPU = CLUSTERS / "910bx32.yaml"
GPU = CLUSTERS / "a100x16.yaml"
ASCEND_VARS = ("HCCL_CONNECT_TIMEOUT", "HCCL_SOCKET_IFNAME", "ASCEND_RT_VISIBLE_DEVICES", "PYTORCH_NPU_ALLOC_CONF")
SET_ENV = "source /usr/local/Ascend/ascend-toolkit/set_env.sh"
SCRIPTS = (ROOT / "launch" / "slurm.sbatch", ROOT / "launch" / "hosts.sh")


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch):
    for name in ("SLURM_NODEID", "SLURM_NNODES", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)


def dry_run(capsys, cluster, *extra) -> tuple[list[str], list[str]]:
    """(node headers, command lines) printed by `ppllava launch --dry-run`."""
    assert main(["launch", "--cluster", str(cluster), "--dry-run", *extra]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    headers = [line for line in lines if line.startswith("# node ")]
    commands = [line for line in lines if not line.startswith("#")]
    assert len(headers) == len(commands)
    return headers, commands


def write_cluster(tmp_path, **fields) -> Path:
    data = {"name": "t", "nodes": 1, "procs_per_node": 1, "device": "cpu", "backend": "gloo", **fields}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", sorted(CLUSTERS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_cluster_configs_load(path):
    cluster = launch.load_cluster(path)
    assert cluster.name == path.stem and cluster.world_size == cluster.nodes * cluster.procs_per_node


def test_910b_dry_run_prints_four_node_commands(capsys):
    headers, commands = dry_run(capsys, NPU)
    assert len(commands) == 4
    for rank, (header, line) in enumerate(zip(headers, commands)):
        assert re.fullmatch(rf"# node {rank}/4: world size 32, backend hccl, device npu", header)
        argv = shlex.split(line)
        assert line.startswith(SET_ENV + " && env ")
        assert ["--nnodes", "4"] == argv[argv.index("--nnodes"):][:2]
        assert ["--node-rank", str(rank)] == argv[argv.index("--node-rank"):][:2]
        assert ["--nproc-per-node", "8"] == argv[argv.index("--nproc-per-node"):][:2]
        assert "PPLLAVA_DIST_BACKEND=hccl" in argv and "PPLLAVA_DEVICE=npu" in argv
        assert all(any(a.startswith(f"{name}=") for a in argv) for name in ASCEND_VARS)
        assert "ASCEND_RT_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in argv
        assert "PYTORCH_NPU_ALLOC_CONF=expandable_segments:True" in argv
        assert argv[argv.index("torch.distributed.run") - 1] == "-m"
        # no master address anywhere: the line makes the shell demand MASTER_ADDR
        assert '--master-addr "${MASTER_ADDR:?' in line


def test_a100_dry_run_prints_two_node_commands(capsys):
    headers, commands = dry_run(capsys, GPU, "--master-addr", "10.1.2.3", "--master-port", "29600")
    assert len(commands) == 2
    assert all("world size 16, backend nccl, device cuda" in h for h in headers)
    for rank, line in enumerate(commands):
        argv = shlex.split(line)
        assert "PPLLAVA_DIST_BACKEND=nccl" in argv and "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in argv
        assert ["--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "8",
                "--master-addr", "10.1.2.3", "--master-port", "29600"] == argv[argv.index("--nnodes"):][:10]


def test_dry_run_of_one_node_rank(capsys):
    headers, commands = dry_run(capsys, NPU, "--node-rank", "2", "--master-addr", "n0")
    assert headers == ["# node 2/4: world size 32, backend hccl, device npu"] and len(commands) == 1


def test_train_args_pass_through_verbatim(capsys):
    train = ["--recipe", "my recipe.yaml", "--set", "optim.lr=1e-4 warmup=0.03", "--", "it's", "$HOME"]
    _, commands = dry_run(capsys, GPU, "--master-addr", "m", "--", *train)
    for line in commands:
        argv = shlex.split(line)
        assert argv[-len(train) - 3:] == ["-m", "ppllava", "train", *train]


def test_hosts_give_master_address_and_header(tmp_path, capsys):
    path = write_cluster(tmp_path, nodes=2, procs_per_node=2, hosts=["alpha", "beta"], master_port=1234)
    headers, commands = dry_run(capsys, path)
    assert headers[1] == "# node 1/2 (host beta): world size 4, backend gloo, device cpu"
    assert "--master-addr alpha --master-port 1234" in commands[1]


def test_node_command_and_shell_quoting(tmp_path):
    cluster = launch.load_cluster(write_cluster(tmp_path, env={"A": "x y", "N": 3}, setup=["export Q=1"],
                                                workdir="/opt/my dir"))
    command = launch.node_command(cluster, 0, "127.0.0.1", ["--x", "a b"])
    assert command.env == {"A": "x y", "N": "3", "PPLLAVA_DIST_BACKEND": "gloo", "PPLLAVA_DEVICE": "cpu"}
    assert command.world_size == 1 and command.argv[:3] == (sys.executable, "-m", "torch.distributed.run")
    assert command.shell().startswith("cd '/opt/my dir' && export Q=1 && env 'A=x y' N=3 ")
    with pytest.raises(ValueError, match="node rank 1 is out of range"):
        launch.node_command(cluster, 1, "127.0.0.1", [])


@pytest.mark.parametrize("fields,message", [
    ({"gpus": 8}, "unknown key(s) gpus"),
    ({"nodes": 0}, "nodes must be an integer >= 1, got 0"),
    ({"procs_per_node": "8"}, "procs_per_node must be an integer >= 1"),
    ({"backend": "mpi"}, "backend must be one of gloo, nccl, hccl, got 'mpi'"),
    ({"device": "tpu"}, "device must be one of cpu, cuda, npu"),
    ({"master_port": 70000}, "master_port must be an integer in 1..65535"),
    ({"nodes": 2, "hosts": ["a"]}, "hosts lists 1 host(s) but nodes is 2"),
    ({"env": {"X": True}}, "env.X must be a string or a number"),
    ({"env": {"BAD-NAME": "1"}}, "is not a valid environment variable name"),
    ({"env": {"PPLLAVA_DEVICE": "npu"}}, "PPLLAVA_DEVICE is set by the launcher"),
    ({"setup": "source x"}, "setup must be a list of strings"),
    ({"workdir": "relative/dir"}, "workdir must be an absolute path"),
])
def test_load_cluster_rejects_bad_fields(tmp_path, fields, message):
    path = write_cluster(tmp_path, **fields)
    with pytest.raises(ValueError) as error:
        launch.load_cluster(path)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_load_cluster_rejects_missing_keys_and_bad_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("nodes: 1\n")
    with pytest.raises(ValueError, match="missing required key"):
        launch.load_cluster(path)
    path.write_text("nodes: [1\n")
    with pytest.raises(ValueError, match=r"not valid YAML \(line \d+, column \d+: "):
        launch.load_cluster(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        launch.load_cluster(tmp_path / "missing.yaml")


@pytest.mark.parametrize("fields,extra,message", [
    ({"nodes": 0}, ["--dry-run"], "nodes must be an integer >= 1"),
    ({"backend": "mpi"}, ["--dry-run"], "backend must be one of"),
    ({"nodes": 2}, ["--node-rank", "0"], "has 2 nodes and no master address: pass --master-addr"),
    ({"nodes": 2}, ["--master-addr", "m"], "pass --node-rank N"),
    ({"nodes": 2}, ["--master-addr", "m", "--node-rank", "2"], "--node-rank 2 is out of range"),
])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys, fields, extra, message):
    path = write_cluster(tmp_path, **fields)
    assert main(["launch", "--cluster", str(path), *extra, "--", "--x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ppllava launch: error:") and message in err[0]


def test_cli_runs_this_node_from_slurm_rank(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(launch, "run_node", lambda command: ran.append(command) or 7)
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_NNODES", "2")
    path = write_cluster(tmp_path, nodes=2)
    assert main(["launch", "--cluster", str(path), "--master-addr", "m", "--", "--x", "y z"]) == 7
    assert ran[0].node_rank == 1 and ran[0].argv[-3:] == ("train", "--x", "y z")
    monkeypatch.setenv("SLURM_NNODES", "4")
    assert main(["launch", "--cluster", str(path), "--master-addr", "m"]) == 2


def test_cli_single_node_needs_no_address_or_rank(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(launch, "run_node", lambda command: ran.append(command) or 0)
    assert main(["launch", "--cluster", str(write_cluster(tmp_path))]) == 0
    argv = list(ran[0].argv)
    assert argv[argv.index("--master-addr") + 1] == "127.0.0.1" and ran[0].node_rank == 0


PRINT_ENV = ("import json, os, sys; print(json.dumps({k: os.environ.get(k) for k in "
             "('PPLLAVA_DIST_BACKEND', 'PPLLAVA_DEVICE', 'SITE_VAR', 'FROM_SETUP')} | {'cwd': os.getcwd(), "
             "'parent': os.getppid()})); "
             "sys.exit(3)")


def test_run_node_passes_env_setup_and_exit_status(tmp_path, capfd):
    path = write_cluster(tmp_path, env={"SITE_VAR": "a b"}, setup=["export FROM_SETUP=yes"], workdir=str(tmp_path))
    command = launch.node_command(launch.load_cluster(path), 0, "127.0.0.1", [])
    command = dataclasses.replace(command, argv=(sys.executable, "-c", PRINT_ENV))
    assert launch.run_node(command) == 3
    seen = json.loads(capfd.readouterr().out)
    assert seen == {"PPLLAVA_DIST_BACKEND": "gloo", "PPLLAVA_DEVICE": "cpu", "SITE_VAR": "a b",
                    "FROM_SETUP": "yes", "cwd": str(tmp_path), "parent": os.getpid()}  # bash exec'd it


def test_run_node_forwards_sigterm(tmp_path):
    ready = tmp_path / "ready"
    code = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(30)"
    command = launch.NodeCommand(node_rank=0, nodes=1, world_size=1, argv=(sys.executable, "-c", code), env={})

    def terminate_when_ready() -> None:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # reaches run_node's handler, which forwards it

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=terminate_when_ready)
    thread.start()
    started = time.monotonic()
    status = launch.run_node(command)
    thread.join()
    assert status == 128 + signal.SIGTERM and time.monotonic() - started < 10
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_help_explains_slurm_and_hosts(capsys):
    with pytest.raises(SystemExit) as done:
        main(["launch", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "launch/slurm.sbatch" in out and "--node-rank 1" in out and "SLURM_NODEID" in out


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_executable_and_parse(script):
    assert os.access(script, os.X_OK)
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

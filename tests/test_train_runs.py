"""Real DeepSpeed runs on this CPU (gloo): 2-process ZeRO-2 and ZeRO-3, a 2-node loopback launch, a run
killed and resumed, and the exported checkpoint against the engine's own logits.

The data mixes videos, images, text-only samples and one unreadable video, so processes regularly hold
micro-batches of different kinds (or none at all): the runs finishing is the check that every process
still takes part in the same collectives.

Each run is the tiny recipe on generated data, started as a user would: torchrun (or `ppllava launch`)
in a subprocess. The shared-memory op DeepSpeed compiles on first use is cached under build/.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

pytest.importorskip("deepspeed")

from ppllava.model import load_model  # noqa: E402
from ppllava.model.tiny import save_tiny_checkpoint  # noqa: E402
from train_data import write_training_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "train" / "tiny.yaml"
WORKER = Path(__file__).with_name("train_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(ROOT / "build" / "torch_extensions"),
            "PYTHONWARNINGS": "ignore::FutureWarning"}


@pytest.fixture(scope="module")
def bed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train")
    model = save_tiny_checkpoint(root / "model")
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["attention_dropout"] = 0.1          # so exact resumption needs every RNG restored
    (model / "config.json").write_text(json.dumps(config))
    return {"root": root, "model": str(model), "data": str(write_training_data(root / "data", text_only=2, broken=1))}


def overrides(bed, out, **more) -> list[str]:
    fixed = {"model": bed["model"], "data": bed["data"], "output_dir": str(out), "log_every": 1, "epochs": 3}
    return [f"{k}={v}" for k, v in {**fixed, **more}.items()]


def run(argv, timeout=240) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "terminate called" not in proc.stderr
    return proc


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def losses(out) -> list[float]:
    return [m["loss"] for m in metrics(out)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STEPS = 12      # 15 samples -> 8 per process (DistributedSampler pads) -> 4 steps of 2 x 1 x 2 per epoch, 3 epochs


def assert_goes_down(values: list[float]) -> None:
    assert len(values) == STEPS and all(v == v for v in values)
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3 - 0.3, values


@pytest.fixture(scope="module")
def zero2_run(bed):
    out = bed["root"] / "zero2"
    run(TORCHRUN + ["--standalone", "--nproc-per-node", "2", "-m", "ppllava", "train", "--config", str(RECIPE),
                    *overrides(bed, out, deepspeed="zero2", save_every=3)])
    return out


def test_zero2_two_processes_train(zero2_run):
    rows = metrics(zero2_run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    # global batch 4 = 2 processes x 1 x 2, less the reads of the unreadable video (the last sample, 14),
    # which the sampler's padding may repeat: count them from the samplers' own orders
    reads = []
    for epoch in range(3):
        for rank in (0, 1):
            sampler = DistributedSampler(range(15), num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            reads += list(sampler)
    assert all(r["samples"] <= 4 for r in rows)
    assert sum(r["samples"] for r in rows) == len(reads) - reads.count(14)
    assert_goes_down(losses(zero2_run))
    kept = sorted(p.name for p in (zero2_run / "checkpoints").glob("step-*"))
    assert kept == ["step-000009", "step-000012"]                  # keep_last 2 of 3, 6, 9, 12


def test_zero3_two_processes_train_export_and_serve(bed, tmp_path):
    out, probe = bed["root"] / "zero3", tmp_path / "engine.pt"
    proc = run(TORCHRUN + ["--standalone", "--nproc-per-node", "2", str(WORKER), str(RECIPE), str(probe),
                           *overrides(bed, out, deepspeed="zero3")])
    assert "ZeRO-3" in proc.stdout + proc.stderr
    assert_goes_down(losses(out))
    exported = tmp_path / "exported"
    run([sys.executable, "-m", "ppllava", "export", "--checkpoint", str(out), "--out", str(exported)])
    model = load_model(exported).eval()                             # one process, no DeepSpeed
    assert model.dtype == torch.bfloat16                            # trained in bf16, exported as such
    saved = torch.load(probe)
    with torch.no_grad():
        logits = model(**saved["batch"]).logits.float()
    torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-5)
    fresh = load_model(bed["model"], dtype=torch.bfloat16).eval()
    with torch.no_grad():                                           # and training changed the model
        assert (fresh(**saved["batch"]).logits.float() - logits).abs().max() > 0.1


def test_killed_run_resumes_on_the_same_loss_curve(bed, zero2_run):
    out = bed["root"] / "killed"
    argv = TORCHRUN + ["--standalone", "--nproc-per-node", "2", "-m", "ppllava", "train", "--config", str(RECIPE),
                       *overrides(bed, out, deepspeed="zero2", save_every=3)]
    proc = subprocess.Popen(argv, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while not (out / "checkpoints" / "step-000003" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)                              # no chance to save or clean up
    proc.wait()
    assert not (out / "checkpoints" / f"step-{STEPS:06d}").exists(), "killed too late to test resuming"
    run(argv)                                                        # the same command again
    resumed, uninterrupted = metrics(out), metrics(zero2_run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    torch.testing.assert_close([r["loss"] for r in resumed], [r["loss"] for r in uninterrupted], rtol=1e-6, atol=0)
    assert [r["lr"] for r in resumed] == pytest.approx([r["lr"] for r in uninterrupted])
    assert not list((out / "checkpoints").glob(".partial-*"))
    changed = subprocess.run(argv[:-1] + ["save_every=4", "lr=0.01"], env=env(), cwd=ROOT, capture_output=True,
                             text=True, timeout=240)                # save_every may change, lr may not
    assert changed.returncode != 0
    assert "resuming" in changed.stderr and "different recipe (lr 0.001 -> 0.01)" in changed.stderr


def test_two_nodes_on_loopback_train(bed, tmp_path):
    cluster = tmp_path / "loopback.yaml"
    cluster.write_text(f"name: loopback\nnodes: 2\nprocs_per_node: 1\ndevice: cpu\nbackend: gloo\n"
                       f"master_addr: 127.0.0.1\nmaster_port: {free_port()}\nenv:\n  OMP_NUM_THREADS: '1'\n")
    out = bed["root"] / "two-nodes"
    nodes = [subprocess.Popen([sys.executable, "-m", "ppllava", "launch", "--cluster", str(cluster), "--node-rank",
                               str(rank), "--", "--config", str(RECIPE), *overrides(bed, out)],
                              env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "2 process(es) x 1 x 2 accumulation" in logs[0]
    assert_goes_down(losses(out))

"""Real DeepSpeed runs on this CPU (gloo): 2-process ZeRO-2 and ZeRO-3, a 2-node loopback launch, a run
killed and resumed, and the exported checkpoint against the engine's own logits.

The data mixes videos, images, text-only samples and one unreadable video, so processes regularly hold
micro-batches of different kinds (or none at all): the runs finishing is the check that every process
still takes part in the same collectives.

Each run is the tiny recipe on generated data, started as a user would: torchrun (or `ppllava launch`)
in a subprocess (tests/procs.py: waits with deadlines, the whole process tree killed on a failure).
The shared-memory op DeepSpeed compiles on first use is cached under build/.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

pytest.importorskip("deepspeed")

from ppllava.model import load_model  # noqa: E402
from ppllava.model.tiny import save_tiny_checkpoint  # noqa: E402
from ppllava.train.checkpoint import STATE_FILE, complete_checkpoints  # noqa: E402
from train_data import write_training_data  # noqa: E402
from procs import Launched  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "train" / "tiny.yaml"
WORKER = Path(__file__).with_name("train_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ONE_PROCESS = [sys.executable, "-m", "ppllava"]
DEADLINE = 900          # s for any one run: generous on 2 busy cores (a run takes 30-60 s there)


def env() -> dict:
    """PYTHONPATH: scripts run by path (tests/train_worker.py) import this checkout, not an installed one. No
    torchrun variables: a run is a group of one or torchrun's own, never a rendezvous someone else left behind."""
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**inherited, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(ROOT / "build" / "torch_extensions"),
            "PYTHONWARNINGS": "ignore::FutureWarning",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


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


def run(argv, log, expect=0) -> Launched:
    """Run `argv` to its end (output in `log`.out/.err); its exit status must be `expect`."""
    with Launched(argv, log, env(), ROOT) as proc:
        code = proc.finish(DEADLINE)
    assert code == expect, f"exit {code}, expected {expect}\n{proc.tail()}"
    assert "terminate called" not in proc.stderr()
    return proc


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def losses(out) -> list[float]:
    return [m["loss"] for m in metrics(out)]


def reserved_port() -> socket.socket:
    """A socket bound to a free port and kept open, so that no other program is given that port: bound with
    SO_REUSEADDR and never listening, it still lets torchrun's store (which also sets SO_REUSEADDR) listen there."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


STEPS = 12      # 15 samples -> 8 per process (DistributedSampler pads) -> 4 steps of 2 x 1 x 2 per epoch, 3 epochs


def assert_goes_down(values: list[float]) -> None:
    assert len(values) == STEPS and all(v == v for v in values)
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3 - 0.3, values


def train_argv(bed, out, **more) -> list[str]:
    """`ppllava train` on 2 processes under torchrun (ZeRO-2, a checkpoint every 3 steps unless `more` says)."""
    return TORCHRUN + ["--standalone", "--nproc-per-node", "2", "-m", "ppllava", "train", "--config", str(RECIPE),
                       *overrides(bed, out, **{"deepspeed": "zero2", "save_every": 3, **more})]


@pytest.fixture(scope="module")
def zero2_run(bed):
    out = bed["root"] / "zero2"
    run(train_argv(bed, out), bed["root"] / "logs" / "zero2")
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
    saved = json.loads((zero2_run / "checkpoints" / "step-000012" / "config.json").read_text())
    assert saved["default_frames"] == 4                             # the recipe's frames: infer's default


def test_zero3_two_processes_train_export_and_serve(bed, tmp_path):
    out, probe = bed["root"] / "zero3", tmp_path / "engine.pt"
    proc = run(TORCHRUN + ["--standalone", "--nproc-per-node", "2", str(WORKER), str(RECIPE), str(probe),
                           *overrides(bed, out, deepspeed="zero3")], tmp_path / "zero3")
    assert "ZeRO-3" in proc.output()
    assert_goes_down(losses(out))
    exported = tmp_path / "exported"
    run(ONE_PROCESS + ["export", "--checkpoint", str(out), "--out", str(exported)], tmp_path / "export")
    model = load_model(exported).eval()                             # one process, no DeepSpeed
    assert model.config.default_frames == 4                         # the frames it trained with, carried over
    assert model.dtype == torch.bfloat16                            # trained in bf16, exported as such
    saved = torch.load(probe)
    with torch.no_grad():
        logits = model(**saved["batch"]).logits.float()
    torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-5)
    fresh = load_model(bed["model"], dtype=torch.bfloat16).eval()
    with torch.no_grad():                                           # and training changed the model
        assert (fresh(**saved["batch"]).logits.float() - logits).abs().max() > 0.1


def checkpoint_names(out) -> list[str]:
    return [p.name for p in complete_checkpoints(Path(out) / "checkpoints")]


@pytest.fixture(scope="module")
def killed_and_resumed(bed, zero2_run):
    """The zero2 run's command, SIGKILLed (every process of it) once its second checkpoint (step 6; keep_last 2
    keeps step 3 too) is complete, then run again: two complete checkpoints to choose from, and dropout
    (attention_dropout 0.1) in every step after the one resumed."""
    out, logs = bed["root"] / "killed", bed["root"] / "logs"
    argv, sixth = train_argv(bed, out), out / "checkpoints" / "step-000006"
    with Launched(argv, logs / "killed", env(), ROOT) as first:
        first.wait_for(lambda: (sixth / STATE_FILE).is_file(), f"checkpoint {sixth}", DEADLINE)
        killed = first.kill()                                       # torchrun, both workers: no chance to save
    assert len(killed) >= 3, f"killed only {killed}: torchrun and its 2 workers expected"
    state = {"checkpoints": checkpoint_names(out), "rows": metrics(out), "killed": killed}
    rerun = run(argv, logs / "resumed")                             # the same command again
    return {"out": out, "before": state, "log": rerun.output()}


def test_killed_run_resumes_from_the_newest_checkpoint_on_the_same_loss_curve(killed_and_resumed, zero2_run):
    out, before = killed_and_resumed["out"], killed_and_resumed["before"]
    # killed before its third checkpoint: steps 1-6 recorded, perhaps 7 or 8, never 9
    assert before["checkpoints"] == ["step-000003", "step-000006"], f"killed too late: {before['checkpoints']}"
    steps = [r["step"] for r in before["rows"]]
    assert steps == list(range(1, len(steps) + 1)) and 6 <= len(steps) <= 8, steps
    # the newer of the two: 6 steps x 2 micro-batches = 12 of the 8 per process per epoch
    checkpoint = out / "checkpoints" / "step-000006"
    assert f"resumed from {checkpoint}: step 6, epoch 1, micro-batch 4" in killed_and_resumed["log"]
    resumed, uninterrupted = metrics(out), metrics(zero2_run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert resumed[:6] == before["rows"][:6]                        # rows up to the checkpoint kept as they were
    torch.testing.assert_close([r["loss"] for r in resumed], [r["loss"] for r in uninterrupted], rtol=1e-6, atol=0)
    assert [r["lr"] for r in resumed] == pytest.approx([r["lr"] for r in uninterrupted])
    assert checkpoint_names(out) == ["step-000009", "step-000012"]
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]   # none partial, none set aside


def test_a_resume_with_another_recipe_world_size_or_resume_none_is_refused(bed, killed_and_resumed, tmp_path):
    """One process on the 2-process run's folder: each refusal is one line and exit 2, before the model loads,
    and leaves the run as it was."""
    out = killed_and_resumed["out"]
    kept, rows = checkpoint_names(out), metrics(out)
    one = ONE_PROCESS + ["train", "--config", str(RECIPE), *overrides(bed, out, deepspeed="zero2", save_every=3)]
    newest = out / "checkpoints" / "step-000012"
    cases = {"recipe": (["save_every=4", "lr=0.01"],                 # save_every may change, lr may not
                        f"resuming {newest} with a different recipe (lr 0.001 -> 0.01)"),
             "world": ([], f"checkpoint {newest} was written by 2 processes, this run has 1: resume with the same "
                           f"world size"),
             "none": (["resume=none"], f"{out / 'checkpoints'} already holds checkpoints and resume=none")}
    with ExitStack() as running:                                     # all three at once
        procs = {name: running.enter_context(Launched(one + more, tmp_path / name, env(), ROOT))
                 for name, (more, _) in cases.items()}
        codes = {name: proc.finish(DEADLINE) for name, proc in procs.items()}
    wrong = []                                                      # every case's answer, not just the first wrong one
    for name, proc in procs.items():
        last = (proc.stderr().strip().splitlines() or [""])[-1]
        if not (codes[name] == 2 and last.startswith("ppllava train: error: ") and cases[name][1] in last
                and "Traceback" not in proc.stderr() and "Loading weights" not in proc.output()):
            wrong.append(f"{name}: exit {codes[name]}, expected 2 and {cases[name][1]!r}\n{proc.tail(1500)}")
    assert not wrong, "\n\n".join(wrong)
    assert checkpoint_names(out) == kept and metrics(out) == rows


def test_a_damaged_newest_checkpoint_resumes_from_the_previous_on_the_same_losses(bed, zero2_run, tmp_path):
    """The finished zero2 run with its newest checkpoint's model states cut short (a disk that filled up): the same
    command resumes from step 9 with a warning naming the damaged file, sets the damaged one aside, and steps 10-12
    give the uninterrupted run's losses."""
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(zero2_run, out)
    newest = out / "checkpoints" / "step-000012"
    states = newest / "mp_rank_00_model_states.pt"
    os.truncate(states, states.stat().st_size // 2)
    cut_size = states.stat().st_size
    log = run(train_argv(bed, out), tmp_path / "resumed").output()
    assert (f"checkpoint {newest} is damaged: mp_rank_00_model_states.pt is cut short or not what it should be"
            in log and "using the previous complete checkpoint, step-000009" in log), log[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step-000009'}: step 9" in log
    resumed, uninterrupted = metrics(out), metrics(zero2_run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    torch.testing.assert_close([r["loss"] for r in resumed], [r["loss"] for r in uninterrupted], rtol=1e-6, atol=0)
    assert checkpoint_names(out) == ["step-000009", "step-000012"]
    assert (out / "checkpoints" / ".abandoned-step-000012" / states.name).stat().st_size == cut_size   # kept aside


def test_two_nodes_on_loopback_train(bed, tmp_path):
    out, cluster, port = bed["root"] / "two-nodes", tmp_path / "loopback.yaml", reserved_port()
    with port:                                                      # held until both nodes are done
        cluster.write_text(f"name: loopback\nnodes: 2\nprocs_per_node: 1\ndevice: cpu\nbackend: gloo\n"
                           f"master_addr: 127.0.0.1\nmaster_port: {port.getsockname()[1]}\n"
                           f"env:\n  OMP_NUM_THREADS: '1'\n")
        nodes = [Launched(ONE_PROCESS + ["launch", "--cluster", str(cluster), "--node-rank", str(rank), "--",
                                         "--config", str(RECIPE), *overrides(bed, out)], tmp_path / f"node{rank}",
                          env(), ROOT) for rank in (0, 1)]
        with nodes[0], nodes[1]:
            codes = [node.finish(DEADLINE) for node in nodes]
    assert codes == [0, 0], "\n".join(node.tail(3000) for node in nodes)
    assert "2 process(es) x 1 x 2 accumulation" in nodes[0].output()
    assert_goes_down(losses(out))

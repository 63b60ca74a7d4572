"""A BT-Adapter model converted from the authors' layout trains with real DeepSpeed on this CPU (issue 20):
2-process ZeRO-2 (the loss goes down, the adapter's weights change in the export, a run SIGKILLed after a
checkpoint resumes on the same losses bit for bit) and 2-process ZeRO-3 (the same losses as ZeRO-2, the engine's
logits equal the exported folder's in one process without DeepSpeed).

The model is tests/authors_layout.py's tiny Vicuna release (BT-Adapter of depth 3 on a 4-layer CLIP, time embedding
of 8 frames) converted by ppllava.model.convert. Its BT-Adapter drops paths in training (btadapter_drop_path 0.1),
so an exact resumption needs every process's RNG restored. The data mixes videos (4 of their 8 frames: within the
adapter's 8), single images (LLaVA-NeXT's anyres crops with image_newline, as inference reads them) and a text-only
row (the stand-in image), so the processes' micro-batches regularly differ in kind: under ZeRO every trainable
parameter must then get a gradient on every process (a video-only micro-batch once left image_newline without one:
the gradient reductions mismatched), and under ZeRO-3, run here with every parameter partitioned, each must be
reached through its module's call (else it is an empty partition there).

The runs, helpers and deadlines are tests/test_train_runs.py's (torchrun subprocesses via tests/procs.py).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

pytest.importorskip("deepspeed")

import authors_layout  # noqa: E402
from ppllava.model import anyres, load_model  # noqa: E402
from ppllava.model.checkpoint import read_config  # noqa: E402
from ppllava.model.convert import convert  # noqa: E402
from ppllava.train.checkpoint import STATE_FILE  # noqa: E402
from ppllava.train.config import DEEPSPEED_DIR  # noqa: E402
from procs import Launched  # noqa: E402
from test_train_runs import (DEADLINE, ONE_PROCESS, RECIPE, ROOT, TORCHRUN, WORKER, checkpoint_names, env,  # noqa: E402
                             metrics, run)
from train_data import write_training_data  # noqa: E402

IMAGE_SIZE = (48, 64)   # (H, W) of train_data's images
FRAMES = 4              # of the data's 8; the converted adapter's time embedding has btadapter_max_frames (8) rows
STEPS = 7               # 13 samples -> 7 per process (the sampler pads) -> 2 epochs x 7 micro-batches // 2 accumulation
SAVE_EVERY = 3          # checkpoints at steps 3, 6 and 7; step 4 straddles the epoch boundary
# the adapter's last layer pairs with CLIP's last layer, after the feature layer (-2): it never runs (as in their
# code, where it only reaches hidden_states[-1]), so it gets no gradient and must stay as converted
UNUSED = ("btadapter.temporal.2.", "btadapter.spatial.2.")


@pytest.fixture(scope="module")
def bed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("authors-train")
    theirs = authors_layout.write_authors_checkpoint("vicuna", root / "theirs")
    config = convert(theirs["model"], theirs["text_tower"], root / "model")
    assert config.btadapter_depth == 3 and config.btadapter_drop_path > 0 and config.image_newline
    assert FRAMES <= config.btadapter_max_frames
    data = write_training_data(root / "data", text_only=1)
    anno = data.parent / "anno.json"                    # the text-only row among the videos: sample 0 stays a
    records = json.loads(anno.read_text())              # video and the last one an image (the worker's probe batch)
    records.insert(1, records.pop())
    anno.write_text(json.dumps(records))
    # ZeRO-3 at its strictest: configs/deepspeed/zero3.yaml may keep parameters under 1e5 elements whole (nearly
    # all of this tiny model's) and keep gathered ones for reuse; here every parameter is partitioned, as a 7B
    # model's are, and released as soon as its module's call ends, so that a parameter reached other than through
    # its module (or an attribute read inside the engine's forward, which DeepSpeed gathers) is an empty tensor
    zero3 = yaml.safe_load((DEEPSPEED_DIR / "zero3.yaml").read_text())
    zero3["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_max_reuse_distance=0,
                                      stage3_max_live_parameters=0, stage3_prefetch_bucket_size=0)
    (root / "zero3-partition-all.yaml").write_text(yaml.safe_dump(zero3))
    return {"root": root, "model": root / "model", "data": data, "zero3": root / "zero3-partition-all.yaml"}


def train_argv(bed, out, stage: str, script=None) -> list[str]:
    """The tiny recipe on the converted model, 2 processes under torchrun (`script`: tests/train_worker.py and
    its probe file, instead of `ppllava train`)."""
    entry = [str(WORKER), str(RECIPE), str(script)] if script else ["-m", "ppllava", "train", "--config", str(RECIPE)]
    fixed = {"model": bed["model"], "data": bed["data"], "output_dir": out, "deepspeed": stage, "frames": FRAMES,
             "epochs": 2, "save_every": SAVE_EVERY, "log_every": 1}
    return TORCHRUN + ["--standalone", "--nproc-per-node", "2", *entry, *(f"{k}={v}" for k, v in fixed.items())]


def export(bed, run_dir, name: str):
    out = bed["root"] / "exports" / name
    run(ONE_PROCESS + ["export", "--checkpoint", str(run_dir), "--out", str(out)],
        bed["root"] / "logs" / f"export-{name}")
    return out


def weights(folder) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in load_model(folder).state_dict().items()}


def assert_adapter_trained(bed, exported) -> None:
    """Through the saved weights: every BT-Adapter tensor that runs changed, the unused layer and the frozen
    vision tower did not."""
    before, after = weights(bed["model"]), weights(exported)
    assert before.keys() == after.keys()
    adapter = [k for k in before if k.startswith("btadapter.")]
    assert len(adapter) == 3 * (12 + 16) + 2                 # 3 x (temporal + spatial layer), time embedding, CLS
    unchanged = [k for k in adapter if not k.startswith(UNUSED) and torch.equal(before[k], after[k])]
    assert not unchanged, f"BT-Adapter tensors the training did not change: {unchanged}"
    moved = [k for k in before if k.startswith(UNUSED + ("vision_tower.",)) and not torch.equal(before[k], after[k])]
    assert not moved, f"tensors without a gradient (the unused layer) or frozen (the vision tower) changed: {moved}"


@pytest.fixture(scope="module")
def zero2_run(bed):
    out = bed["root"] / "zero2"
    proc = run(train_argv(bed, out, "zero2"), bed["root"] / "logs" / "zero2")
    assert "ZeRO-2; trains prompt_tower, projector, llm, btadapter;" in proc.output()
    return out


def test_zero2_two_processes_train_the_bt_adapter(bed, zero2_run):
    rows = metrics(zero2_run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    values = [r["loss"] for r in rows]
    assert all(v == v and abs(v) != float("inf") for v in values), values
    assert sum(values[-2:]) / 2 < sum(values[:2]) / 2 - 1.0, values
    assert checkpoint_names(zero2_run) == ["step-000006", "step-000007"]
    assert_adapter_trained(bed, export(bed, zero2_run, "zero2"))


@pytest.fixture(scope="module")
def killed_and_resumed(bed, zero2_run):
    """The zero2 command, SIGKILLed (torchrun and both workers) once its first checkpoint (step 3) is complete,
    then run again."""
    out, logs = bed["root"] / "killed", bed["root"] / "logs"
    argv, third = train_argv(bed, out, "zero2"), out / "checkpoints" / "step-000003"
    with Launched(argv, logs / "killed", env(), ROOT) as first:
        first.wait_for(lambda: (third / STATE_FILE).is_file(), f"checkpoint {third}", DEADLINE)
        killed = first.kill()
    assert len(killed) >= 3, f"killed only {killed}: torchrun and its 2 workers expected"
    before = {"checkpoints": checkpoint_names(out), "rows": metrics(out)}
    rerun = run(argv, logs / "resumed")
    return {"out": out, "before": before, "log": rerun.output()}


def test_a_killed_bt_adapter_run_resumes_on_the_same_losses_bit_for_bit(killed_and_resumed, zero2_run):
    out, before = killed_and_resumed["out"], killed_and_resumed["before"]
    assert before["checkpoints"] == ["step-000003"], f"killed too late: {before['checkpoints']}"
    steps = [r["step"] for r in before["rows"]]
    assert steps == list(range(1, len(steps) + 1)) and 3 <= len(steps) <= 5, steps
    # 3 steps x 2 micro-batches = 6 of the 7 per process in epoch 0: step 4 finishes epoch 0 and starts epoch 1
    checkpoint = out / "checkpoints" / "step-000003"
    assert f"resumed from {checkpoint}: step 3, epoch 0, micro-batch 6" in killed_and_resumed["log"]
    resumed, uninterrupted = metrics(out), metrics(zero2_run)
    assert resumed[:3] == before["rows"][:3]
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in uninterrupted]      # exact: the drop path's RNG too
    assert resumed == uninterrupted                                               # lr, tokens, samples, epoch
    assert checkpoint_names(out) == ["step-000006", "step-000007"]


def test_zero3_two_processes_train_the_bt_adapter_and_the_export_computes_as_the_engine(bed, zero2_run):
    out, probe = bed["root"] / "zero3", bed["root"] / "zero3-engine.pt"
    proc = run(train_argv(bed, out, bed["zero3"], script=probe), bed["root"] / "logs" / "zero3")
    assert "ZeRO-3; trains prompt_tower, projector, llm, btadapter;" in proc.output()
    # the same numbers as ZeRO-2: a parameter ZeRO-3 left partitioned (read outside its module's call) would
    # break the run or change the losses (both runs are bit-identical here; rtol leaves room for reduction order)
    zero3, zero2 = metrics(out), metrics(zero2_run)
    assert [r["step"] for r in zero3] == list(range(1, STEPS + 1))
    torch.testing.assert_close([r["loss"] for r in zero3], [r["loss"] for r in zero2], rtol=1e-3, atol=0)
    exported = export(bed, out, "zero3")
    assert_adapter_trained(bed, exported)
    saved = torch.load(probe)                       # a 4-frame video and an image, and the engine's logits on them
    batch = saved["batch"]
    assert batch["visual_is_video"].tolist() == [True, False]
    config = read_config(bed["model"])           # the image as inference reads it: LLaVA-NeXT's anyres crops
    rows, cols = anyres.grid_shape(IMAGE_SIZE, config.image_grid_pinpoints, config.vision_config.image_size)
    assert batch["visual_frames"].tolist() == [FRAMES, 1 + rows * cols] and rows * cols > 1
    assert batch["visual_image_size"].tolist() == [[0, 0], list(IMAGE_SIZE)]
    model = load_model(exported).eval()             # one process, no DeepSpeed
    assert model.dtype == torch.bfloat16 and model.config.btadapter_depth == 3
    with torch.no_grad():
        logits = model(**batch).logits.float()
        fresh = load_model(bed["model"]).eval()(**batch).logits.float()
    torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-5)
    assert (fresh - logits).abs().max() > 0.1                                     # and training changed them


def test_videos_longer_than_the_time_embedding_are_refused_before_training(bed, tmp_path):
    out = tmp_path / "run"
    proc = run(ONE_PROCESS + ["train", "--config", str(RECIPE), f"model={bed['model']}", f"data={bed['data']}",
                              f"output_dir={out}", "frames=16"], tmp_path / "log", expect=2)
    lines = proc.stderr().strip().splitlines()
    assert len(lines) == 1 and "16 frames" in lines[0] and "btadapter_max_frames" in lines[0], lines
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())

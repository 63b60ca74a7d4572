"""The training pieces that need no process group: recipe, DeepSpeed config, schedule, parameter groups,
sampler positions, checkpoint discovery; and the CLI's answers to bad input and non-finite losses."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml

from backends.device import REPRODUCIBLE_ENV
from ppllava.cli import main
from ppllava.model import build_model
from ppllava.train.checkpoint import STATE_FILE, complete_checkpoints, find_checkpoint
from ppllava.train.config import load_train_config
from ppllava.train.deepspeed_config import deepspeed_config
from ppllava.train.optim import WarmupCosine, param_groups, warmup_steps
from ppllava.train.stream import ResumableSampler
from procs import Launched

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "train").glob("*.yaml"))
BASE = ["model=m", "data=d.yaml", "output_dir=o"]


# -- the recipe ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_fills_a_deepspeed_config(recipe):
    cfg = load_train_config(recipe)
    ds = deepspeed_config(cfg, accumulation=cfg.global_batch_size // cfg.micro_batch_size // 2, world_size=2)
    assert ds["train_batch_size"] == cfg.global_batch_size
    assert ds["bf16"]["enabled"] == (cfg.precision == "bf16")
    assert ds["zero_optimization"]["stage"] in (2, 3)


@pytest.mark.parametrize("name, lr", [("llava-video-7b", 1e-5), ("llava-next-7b", 2e-5)])
def test_paper_recipes(name, lr):
    cfg = load_train_config(ROOT / "configs" / "train" / f"{name}.yaml")
    assert (cfg.frames, cfg.global_batch_size, cfg.lr, cfg.warmup_ratio, cfg.epochs) == (32, 128, lr, 0.03, 1)
    assert cfg.model_overrides["video_kernel"] == [2, 3, 3] and cfg.model_overrides["image_kernel"] == [1, 3, 3]
    assert cfg.precision == "bf16" and cfg.gradient_checkpointing
    for world in (16, 32):                     # 16 x A100 and 32 x 910B: the same global batch divides
        assert cfg.global_batch_size % (cfg.micro_batch_size * world) == 0


def test_overrides_parse_as_yaml_and_reach_mappings(tmp_path):
    cfg = load_train_config(None, BASE + ["lr=3e-5", "frames=16", "resume=none", "model_overrides.video_kernel=[1,2,2]",
                                          "group_lr.projector=1e-4", "betas=[0.9,0.95]", "max_steps=7"])
    assert (cfg.lr, cfg.frames, cfg.resume, cfg.max_steps) == (3e-5, 16, "none", 7)
    assert cfg.model_overrides == {"video_kernel": [1, 2, 2]} and cfg.group_lr == {"projector": 1e-4}
    assert cfg.betas == (0.9, 0.95)


@pytest.mark.parametrize("items, message", [
    (["lrr=1"], "unknown key 'lrr'"),
    (["lr"], "not key=value"),
    (["precision=fp8"], "precision must be one of"),
    (["nonfinite=ignore"], "nonfinite must be one of"),
    (["micro_batch_size=0"], "micro_batch_size must be an int >= 1"),
    (["group_lr.vision=1e-4"], "group_lr must map parameter groups"),
    (["lr=fast"], "lr must be a number"),
    (["warmup_ratio=1.5"], "warmup_ratio must be a finite number >= 0 and < 1"),
    (["betas=0.9"], "betas must be two numbers in [0, 1)"),
    (["lr=[1]"], "lr must be a finite number > 0"),
    (["epochs=.inf"], "epochs must be a finite number > 0"),
    (["grad_clip=.nan"], "grad_clip must be a finite number >= 0"),
    (["micro_batch_size=true"], "micro_batch_size must be an int >= 1"),
    (["group_lr.projector=-1"], "group_lr must map parameter groups"),
])
def test_bad_overrides_name_the_problem(items, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        load_train_config(None, BASE + items)


def test_missing_paths_are_named():
    with pytest.raises(ValueError, match="model, data must be set"):
        load_train_config(None, ["output_dir=o"])


def test_deepspeed_config_may_not_restate_the_recipe(tmp_path):
    clash = tmp_path / "ds.yaml"
    clash.write_text(yaml.safe_dump({"zero_optimization": {"stage": 2}, "train_batch_size": 64}))
    cfg = load_train_config(None, BASE + [f"deepspeed={clash}"])
    with pytest.raises(ValueError, match="train_batch_size come from the training recipe"):
        deepspeed_config(cfg, 1, 1)
    with pytest.raises(ValueError, match="unknown deepspeed config 'zero9'"):      # when the recipe is read
        load_train_config(None, BASE + ["deepspeed=zero9"])
    with pytest.raises(FileNotFoundError, match="deepspeed config .*nope.yaml does not exist"):
        load_train_config(None, BASE + [f"deepspeed={tmp_path / 'nope.yaml'}"])


def test_cli_bad_recipe_exits_2_with_one_line(capsys):
    assert main(["train", "--config", "configs/train/tiny.yaml", "lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown key 'lrr'" in err
    assert main(["export", "--checkpoint", "/nonexistent/run", "--out", "x"]) == 2
    assert "no complete training checkpoint" in capsys.readouterr().err


# -- schedule and parameter groups --------------------------------------------------------------------
def test_warmup_then_cosine_to_zero():
    total, ratio = 100, 0.03
    warmup = warmup_steps(total, ratio)
    f = WarmupCosine(warmup, total)
    assert warmup == 3
    assert [f(s) for s in range(3)] == pytest.approx([1 / 4, 2 / 4, 3 / 4])      # rising, never 0
    assert f(3) == pytest.approx(1.0)
    mid = 3 + (total - 3) // 2
    assert f(mid) == pytest.approx(0.5 * (1 + math.cos(math.pi * (mid - 3) / 97)))
    assert f(total) == pytest.approx(0.0) and f(total + 5) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(3, total))


def test_param_groups_follow_the_model_switches():
    model = build_model("tiny", seed=0)
    model.config.train_prompt_tower = False
    trains = model.apply_trainable()
    groups = param_groups(model, lr=1e-5, weight_decay=0.1, group_lr={"projector": 1e-3})
    by_name = {g["name"]: g for g in groups}
    assert not trains["vision_tower"] and not trains["prompt_tower"]
    assert set(by_name) == {"projector", "projector/no_decay", "llm", "llm/no_decay"}
    assert by_name["projector"]["lr"] == 1e-3 and by_name["llm"]["lr"] == 1e-5
    assert by_name["llm/no_decay"]["weight_decay"] == 0.0 and by_name["llm"]["weight_decay"] == 0.1
    assert all(p.ndim >= 2 for p in by_name["llm"]["params"])                      # biases and norms never decay
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)                                    # each once, none frozen
    for _, p in model.named_parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        param_groups(model, 1e-5, 0.0, {})


# -- data position ------------------------------------------------------------------------------------
def test_resumable_sampler_continues_the_same_order():
    data = list(range(23))
    for rank in (0, 1):
        sampler = ResumableSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(4)
        full = list(sampler)
        sampler.start = 5
        assert list(sampler) == full[5:] and len(sampler) == len(full) - 5
    a, b = (ResumableSampler(data, num_replicas=2, rank=r, shuffle=True, seed=3) for r in (0, 1))
    assert sorted(set(a) | set(b)) == data                                         # the shards cover the data


class _Numbers(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, i):
        return (self.epoch, i)


def test_micro_batches_resume_at_every_position_including_epoch_ends():
    from ppllava.train.stream import MicroBatches, Position

    def collate(items):
        return {"input_ids": torch.tensor(items), "skipped": []}

    def take(stream, start, n):
        batches = stream.batches(start)
        return [(next(batches)["input_ids"].tolist(), stream.position) for _ in range(n)]

    stream = MicroBatches(_Numbers(11), collate, micro_batch_size=2, rank=1, world_size=2, seed=5, workers=0,
                          max_skip_fraction=0.0)
    assert stream.per_epoch == 3                                        # 6 samples per process, 2 a batch
    full = take(stream, Position(), 10)
    assert [p for _, p in full[:4]] == [Position(0, 1), Position(0, 2), Position(0, 3), Position(1, 1)]
    assert {e for batch, _ in full for e, _ in batch} == {0, 1, 2, 3}  # the dataset saw each epoch
    for cut in range(1, 9):                                             # stop after `cut` batches, resume
        assert take(stream, full[cut - 1][1], 10 - cut) == full[cut:]


# -- checkpoint discovery -----------------------------------------------------------------------------
def test_only_complete_checkpoints_are_found(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    for name, complete in [("step-000010", True), ("step-000200", True), ("step-000030", False),
                           (".partial-step-000300", True)]:
        (root / name).mkdir(parents=True)
        if complete:                  # a sound one: its state's fields and a model states file (a zip, as torch's)
            (root / name / STATE_FILE).write_text(json.dumps({"step": 1, "position": [0, 0], "world_size": 1}))
            torch.save({}, root / name / "mp_rank_00_model_states.pt")
    assert [p.name for p in complete_checkpoints(root)] == ["step-000010", "step-000200"]   # numeric order
    assert find_checkpoint(tmp_path / "run").name == "step-000200"
    assert find_checkpoint(root / "step-000010").name == "step-000010"
    with pytest.raises(FileNotFoundError, match="no complete training checkpoint"):
        find_checkpoint(root / "step-000030")
    with pytest.raises(ValueError, match="is an incomplete checkpoint"):
        find_checkpoint(root / ".partial-step-000300")                   # even with its state file


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path):
    from ppllava.train.checkpoint import Checkpoints

    class One:                                                          # a process group of one
        is_main, rank, world_size = True, 0, 1

        def barrier(self):
            pass

    root = tmp_path / "checkpoints"
    for step in (3, 6, 9):
        (root / f"step-{step:06d}").mkdir(parents=True)
        (root / f"step-{step:06d}" / STATE_FILE).write_text(json.dumps({"step": step}))
    Checkpoints(root, One(), keep_last=2).set_aside_newer(root / "step-000003")
    assert [p.name for p in complete_checkpoints(root)] == ["step-000003"]
    assert sorted(p.name for p in root.iterdir()) == [".abandoned-step-000006", ".abandoned-step-000009", "step-000003"]


# -- non-finite losses and gradients, SIGTERM (real runs) ----------------------------------------------
DEADLINE = 900          # s for any one run: generous on 2 busy cores (a run takes 15-60 s there)
INJECT = Path(__file__).with_name("train_inject.py")


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    pytest.importorskip("deepspeed")
    from ppllava.model.tiny import save_tiny_checkpoint
    from train_data import write_training_data

    root = tmp_path_factory.mktemp("nonfinite")
    return {"model": save_tiny_checkpoint(root / "model"), "data": write_training_data(root / "data", videos=4, images=4),
            "root": root}


def _env(threads=1, extra_env=None) -> dict:
    """PYTHONPATH: tests/train_inject.py, run by path, imports this checkout, not an installed one."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCH_EXTENSIONS_DIR": str(ROOT / "build" / "torch_extensions"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **(extra_env or {})}


def _argv(bed, out, *more, processes=1, entry=("-m", "ppllava")) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    return [sys.executable, *launcher, *entry, "train", "--config", "configs/train/tiny.yaml", f"model={bed['model']}",
            f"data={bed['data']}", f"output_dir={out}", "epochs=4", "log_every=1", "lr=1e6", "warmup_ratio=0", *more]


def _train(bed, out, *more, processes=1, threads=1, extra_env=None) -> Launched:
    """Run `ppllava train` to its end (the whole process tree killed if it outlives DEADLINE)."""
    with Launched(_argv(bed, out, *more, processes=processes), Path(f"{out}-log"), _env(threads, extra_env), ROOT) as proc:
        proc.finish(DEADLINE)
    return proc


def _rows(out) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_non_finite_loss_stops_or_skips_and_says_so(bed, policy):
    """lr=1e6 breaks the model after one step. stop: one process ends at once; skip: two processes under
    ZeRO-3 drop the micro-batches together (forward without backward) until the cap."""
    out = bed["root"] / policy
    if policy == "stop":
        proc = _train(bed, out, "nonfinite=stop")
        assert proc.returncode == 1, proc.tail()
        last = proc.stderr().strip().splitlines()[-1]
        assert "non-finite loss at step" in last and "nonfinite=stop" in last
    else:
        proc = _train(bed, out, "nonfinite=skip", "max_nonfinite_skips=2", "deepspeed=zero3", processes=2)
        assert proc.returncode != 0
        assert "3 non-finite losses or gradients (max_nonfinite_skips 2)" in proc.stderr()
        assert proc.output().count("micro-batch skipped on every process") == 2
    rows = _rows(out)
    assert rows and all(math.isfinite(r["loss"]) for r in rows)        # only finite steps were recorded


def test_inf_gradients_skip_the_step_and_sigterm_exits_143(bed):
    """One process of `ppllava train` (tests/train_inject.py: step 2 backpropagates inf, its loss finite):
    DeepSpeed skips that optimizer step, the run says so under nonfinite=skip and marks the row; then
    SIGTERM: it finishes its step, saves, and exits with 143."""
    out = bed["root"] / "inf-gradients"
    argv = _argv(bed, out, "lr=1e-3", "epochs=12", "save_every=1000", "nonfinite=skip", entry=(str(INJECT), "2"))
    with Launched(argv, Path(f"{out}-log"), _env(), ROOT) as proc:
        proc.wait_for(lambda: len(_rows(out)) >= 3, f"3 rows in {out / 'metrics.jsonl'}", DEADLINE)
        proc.send_signal(signal.SIGTERM)
        code = proc.finish(DEADLINE)
    rows, log = _rows(out), proc.output()
    last = rows[-1]["step"]
    assert code == 143, proc.tail()
    assert f"stopped by signal at step {last}; run the same command again to resume" in log
    assert 3 <= last < 24 and [r["step"] for r in rows] == list(range(1, last + 1))      # 24 steps in all
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == [f"step-{last:06d}"]
    assert [r.get("applied", True) for r in rows] == [r["step"] != 2 for r in rows]
    assert all(math.isfinite(r["loss"]) for r in rows)                  # the loss of step 2 too
    assert "non-finite gradients at step 2, epoch 0: optimizer step skipped on every process (1 of at most 10)" in log
    assert log.count("optimizer step skipped") == 1
    state = json.loads((out / "checkpoints" / f"step-{last:06d}" / STATE_FILE).read_text())
    assert state["step"] == last and state["nonfinite_skips"] == 1 and state["world_size"] == 1


class _One:                                                             # a process group of one
    is_main, rank, world_size = True, 0, 1

    def barrier(self):
        pass


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_a_skipped_optimizer_step_is_a_loss_scale_overflow_only_in_fp16(precision, capsys):
    """DeepSpeed skips the step on inf/nan gradients (its loss scaler in fp16: no fp16 on this CPU, so the
    engine is a stand-in here; the bf16 run above is real). fp16 lowers its scale and goes on, even under
    nonfinite=stop; bf16 and fp32 go through the non-finite policy."""
    from types import SimpleNamespace

    from ppllava.train import NonFiniteLoss
    from ppllava.train.stream import Position
    from ppllava.train.trainer import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.cfg = load_train_config(None, BASE + [f"precision={precision}", "nonfinite=stop"])
    trainer.group, trainer.step, trainer.nonfinite_skips = _One(), 4, 0
    trainer.stream = SimpleNamespace(position=Position(1, 2))
    trainer.engine = SimpleNamespace(was_step_applied=lambda: True)
    assert trainer._check_step_applied() is True and not capsys.readouterr().out
    trainer.engine = SimpleNamespace(was_step_applied=lambda: False)
    if precision == "fp16":
        assert trainer._check_step_applied() is False
        assert capsys.readouterr().out == "step 5: fp16 overflow, step skipped and loss scale lowered\n"
        assert trainer.nonfinite_skips == 0
    else:
        with pytest.raises(NonFiniteLoss, match=r"non-finite gradients at step 5, epoch 1 \(nonfinite=stop\)"):
            trainer._check_step_applied()


def test_a_rerun_repeats_the_losses_bit_for_bit_on_two_threads(bed):
    """deterministic=true and MKL_CBWR=AUTO from the start, as `python -m ppllava.testbed.build` runs stage 2:
    every tower trains here. (Without MKL_CBWR about 1 run in 3 differed in the first step's loss at the 6th
    digit: MKL's BLAS picks code paths by memory alignment; set inside the running process it came too late.)"""
    def run(name):
        out = bed["root"] / name
        proc = _train(bed, out, "lr=1e-3", "epochs=2", "model_overrides.train_vision_tower=true", "deterministic=true",
                      threads=2, extra_env=REPRODUCIBLE_ENV)
        assert proc.returncode == 0, proc.tail()
        return [r["loss"] for r in _rows(out)]
    first, second = run("deterministic-a"), run("deterministic-b")
    assert len(first) >= 4 and first == second


def test_two_frame_counts_under_a_token_budget_train_and_the_export_keeps_the_budget(bed, capsys):
    """`ppllava train`, one process: two datasets sample 8 and 24 frames of the same clips (test_token_budget.py
    checks the micro-batches these make: seed 0 mixes both lengths in one) under video_max_tokens 320, which pools
    them to 256 and 320 tokens; without it the 24-frame videos (768 tokens) would be over max_length 512, skipped,
    and the run stopped. The export keeps the budget, so ppllava infer pools at it, and reads 24 frames (the most
    it trained on) unless told otherwise."""
    from ppllava.train import export_checkpoint
    from train_data import write_training_data

    data = write_training_data(bed["root"] / "two-lengths", videos=2, images=1, frames=24, dataset_frames=(8, 24))
    out = bed["root"] / "two-lengths-run"
    proc = _train({**bed, "data": data}, out, "lr=1e-3", "frames=null", "model_overrides.video_max_tokens=320",
                  "micro_batch_size=3", "global_batch_size=3", "max_steps=2")
    assert proc.returncode == 0, proc.tail()
    rows = _rows(out)
    assert [(r["step"], r["samples"]) for r in rows] == [(1, 3), (2, 3)] and all(math.isfinite(r["loss"]) for r in rows)
    assert sum(r["tokens"] for r in rows) > 2 * 256 + 2 * 320 + 2 * 64       # one epoch: its visual tokens and text
    exported = export_checkpoint(out, bed["root"] / "two-lengths-export")
    capsys.readouterr()                                                    # zero_to_fp32's progress lines
    config = json.loads((exported / "config.json").read_text())
    assert (config["video_max_tokens"], config["video_pooled_size"]) == (320, None)
    assert config["default_frames"] == 24                   # the longest videos it trained on: infer's default
    assert main(["infer", "--model", str(exported), "--video", str(data.parent / "media" / "v0.mp4"), "--prompt",
                 "what", "--max-new-tokens", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["visual_tokens"] == 320


def test_sigterm_saves_a_checkpoint_then_the_same_command_resumes(bed):
    """As Slurm or torchrun stop a job: SIGTERM to torchrun, which signals each worker's process group,
    DataLoader workers included; every process finishes its step, saves, and stops."""
    out = bed["root"] / "sigterm"
    argv = _argv(bed, out, "lr=1e-3", "warmup_ratio=0.1", "epochs=6", "workers=1", "log_every=1000",
                 "save_every=1000", processes=2)
    metrics = out / "metrics.jsonl"
    with Launched(argv, Path(f"{out}-log"), _env(), ROOT) as proc:
        proc.wait_for(lambda: len(_rows(out)) >= 3, f"3 rows in {metrics}", DEADLINE)
        proc.send_signal(signal.SIGTERM)
        proc.finish(DEADLINE)
    steps, log = [r["step"] for r in _rows(out)], proc.output()
    assert f"stopped by signal at step {steps[-1]}" in log, proc.tail()
    assert "exited unexpectedly" not in log and steps[-1] < 12          # 12 steps in all
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == [f"step-{steps[-1]:06d}"]
    with Launched(argv, Path(f"{out}-resumed-log"), _env(), ROOT) as resumed:
        assert resumed.finish(DEADLINE) == 0, resumed.tail()
    assert f"resumed from {out / 'checkpoints' / f'step-{steps[-1]:06d}'}" in resumed.output()
    assert [r["step"] for r in _rows(out)] == list(range(1, 13))


# -- stand-ins: every micro-batch runs the same modules -----------------------------------------------
def _model_and_collator():
    from ppllava.data import Collator
    from ppllava.model.tiny import clip_tokenizer, llm_tokenizer

    model = build_model("tiny", seed=0)
    tokenizer = llm_tokenizer()
    model.config.image_token_id, model.config.video_token_id = tokenizer.convert_tokens_to_ids(["<image>", "<video>"])
    prompt_tokenizer = clip_tokenizer(model.config.prompt_config.max_position_embeddings)
    return model, Collator.for_model(model.config, tokenizer, prompt_tokenizer)


def _calls(model, inputs) -> list[str]:
    """Names of the modules with parameters of their own, in the order they ran."""
    order, hooks = [], []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: order.append(name)))
    model(**inputs)
    for h in hooks:
        h.remove()
    return order


def _text_rows(collator, rows=2, length=7):
    ids = torch.randint(5, 250, (rows, length), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :3] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids), "skipped": []}


def test_stand_in_runs_the_same_modules_in_the_same_order_and_leaves_the_loss_alone():
    from ppllava.model.synthetic import make_batch
    from ppllava.train.stand_in import StandIn

    model, collator = _model_and_collator()
    stand_in = StandIn(model.config, collator)
    video = make_batch(model.config, [(4, True, 0), (1, False, 1)], seed=1)
    video["labels"] = video["input_ids"].clone()
    text = _text_rows(collator)
    reference = _calls(model, stand_in.complete(video)[0])
    assert len(reference) == len(set(reference))                       # each parameterised module once
    for batch in (text, {"skipped": ["x"]}):
        inputs, _ = stand_in.complete(batch)
        assert _calls(model, inputs) == reference

    inputs, counts = stand_in.complete(text)
    assert counts and len(inputs["input_ids"]) == 3
    with_row = model(**inputs).loss
    torch.testing.assert_close(with_row, model(**{k: v for k, v in text.items() if k != "skipped"}).loss)
    with_row.backward()
    projection = model.prompt_pooling.patch_projection
    grads = [p.grad for p in model.multi_modal_projector.parameters()] + [
        p.grad for p in model.prompt_pooling.prompt_tower.parameters()]
    assert all(g is not None and not g.any() for g in grads)           # reached, and zero
    assert all(p.grad is None or not p.grad.any() for p in projection.parameters())

    model.zero_grad(set_to_none=True)
    model(**stand_in.complete(video)[0]).loss.backward()
    used = {n for n, p in model.named_parameters() if p.grad is not None}  # what a real batch trains
    model.zero_grad(set_to_none=True)
    inputs, counts = stand_in.complete({"skipped": ["a", "b"]})
    assert not counts
    inputs.pop("labels")
    loss = model(**inputs).logits.float().sum() * 0.0
    loss.backward()
    assert loss.item() == 0.0
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    assert reached == used and all(not p.grad.any() for n, p in model.named_parameters() if n in reached)


def test_save_weights_accepts_views_of_one_flat_buffer(tmp_path):
    """DeepSpeed's zero_to_fp32 can return parameters that are views into one flat fp32 buffer."""
    from ppllava.model import load_model
    from ppllava.model.checkpoint import save_weights

    model = build_model("tiny", seed=3)
    state = model.state_dict()
    flat = torch.cat([v.reshape(-1).float() for v in state.values()])
    views, offset = {}, 0
    for k, v in state.items():
        views[k] = flat[offset:offset + v.numel()].view(v.shape)
        offset += v.numel()
    save_weights(model.config, views, tmp_path, torch.float32)
    loaded = load_model(tmp_path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k].float()), k


def test_a_group_of_one_leaves_no_torchrun_variables_behind(monkeypatch):
    """A run in this process (a test, a notebook) must not hand RANK / MASTER_PORT to the programs started after
    it: they would take it for torchrun's rendezvous and race for that one port."""
    from ppllava import distributed

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    group = distributed.start(deepspeed=False, device="cpu")
    assert group.world_size == 1 and os.environ["RANK"] == "0"
    distributed.stop()
    assert not {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} & set(os.environ)

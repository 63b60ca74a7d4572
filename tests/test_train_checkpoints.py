"""Which checkpoint a training run resumes from when one is damaged (issue 21): a file of the newest cut short at
several offsets (DeepSpeed's model or optimizer states, the RNG state, config.json) or a broken trainer_state.json
makes resume=auto take the previous sound one with a warning naming the damaged one and the file; an explicit
resume=DIR that is damaged, or a run whose every checkpoint is, is one error naming it. (The real run that resumes
past a damaged checkpoint on the same losses is in test_train_runs.py.)"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml

from ppllava.train.checkpoint import Checkpoints, DamagedCheckpoint, choose_checkpoint, damage, find_checkpoint

FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng-rank0.pt")


class Alone:
    """The one process of a run without torch.distributed: it decides, and there is nobody to wait for."""
    is_main, rank, world_size = True, 0, 1

    def barrier(self):
        pass

    def from_main(self, value):
        return value


def write_checkpoint(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    for name in FILES:
        torch.save({"step": step, "weights": torch.randn(256)}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step, "position": {"epoch": 0, "index": step},
                                                           "world_size": 1}))
    (folder / "config.json").write_text(json.dumps({"model_type": "ppllava"}))
    (folder / "train_config.yaml").write_text(yaml.safe_dump({"lr": 0.001}))
    return folder


@pytest.fixture
def run(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (3, 6):
        write_checkpoint(root / f"step-{step:06d}", step)
    return Checkpoints(root, Alone(), keep_last=2)


def cut(path: Path, where: str) -> None:
    size = path.stat().st_size
    os.truncate(path, {"empty": 0, "a few bytes": 7, "header": min(40, size - 2), "mid": size // 2, "last byte": size - 1}[where])


@pytest.mark.parametrize("name", FILES + ("config.json",))
@pytest.mark.parametrize("where", ["empty", "a few bytes", "header", "mid", "last byte"])
def test_auto_resumes_the_previous_checkpoint_past_a_file_cut_short(run, caplog, name, where):
    newest = run.root / "step-000006"
    assert damage(newest) is None
    cut(newest / name, where)
    caplog.set_level(logging.WARNING)
    assert choose_checkpoint(run, "auto", lambda folder: None) == run.root / "step-000003"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and f"checkpoint {newest} is damaged: {name}" in warned[0], warned
    assert warned[0].endswith("using the previous complete checkpoint, step-000003")


@pytest.mark.parametrize("state", ['{"step": 6, "position": {"epo', "", '{"step": 6}', "\xff\xfe", "[]"])
def test_a_broken_trainer_state_is_named_as_such(run, caplog, state):
    newest = run.root / "step-000006"
    (newest / "trainer_state.json").write_bytes(state.encode("latin-1"))
    assert choose_checkpoint(run, "auto", lambda folder: None) == run.root / "step-000003"
    assert f"checkpoint {newest} is damaged: trainer_state.json" in caplog.text
    with pytest.raises(DamagedCheckpoint, match=f"checkpoint {newest} is damaged: trainer_state.json .*give another"):
        choose_checkpoint(run, str(newest), lambda folder: None)          # chosen by the user: no other one taken


def test_every_checkpoint_damaged_or_an_empty_one_is_one_error(run, tmp_path):
    cut(run.root / "step-000006" / FILES[0], "mid")
    (run.root / "step-000003" / "trainer_state.json").write_text("{")
    with pytest.raises(DamagedCheckpoint, match=f"every checkpoint in {run.root} is damaged"):
        choose_checkpoint(run, "auto", lambda folder: None)
    only_state = tmp_path / "only-state"
    only_state.mkdir()
    (only_state / "trainer_state.json").write_text(json.dumps({"step": 1, "position": {}, "world_size": 1}))
    with pytest.raises(DamagedCheckpoint, match="holds no model states"):
        find_checkpoint(only_state)


def test_resuming_past_a_damaged_checkpoint_sets_it_aside(run):
    cut(run.root / "step-000006" / FILES[1], "mid")
    chosen = choose_checkpoint(run, "auto", lambda folder: None)
    run.set_aside_newer(chosen)
    assert sorted(p.name for p in run.root.iterdir()) == [".abandoned-step-000006", "step-000003"]

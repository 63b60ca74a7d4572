"""Training checkpoints: written atomically, the last N kept, the newest complete one resumed.

    <output_dir>/checkpoints/step-000500/   DeepSpeed's shards (model, optimizer, scheduler), one
                                            rng-rank<R>.pt per process, trainer_state.json (step, data
                                            position, world size, precision), and the model's
                                            config.json and tokenizers, so `ppllava export` needs
                                            nothing else
    <output_dir>/checkpoints/.partial-step-000500/   the same while it is written

Every process writes its part into the .partial- folder; after a barrier the main process renames it.
A crash at any moment leaves either a complete step- folder or a .partial- one, which is never
resumed (and is removed by the next run); folders are deleted the same way, renamed first. A step-
folder damaged afterwards (a file cut short by a full disk or a copy, trainer_state.json broken) is
named with what is wrong: resume=auto then takes the newest sound one, with a warning. Resuming
an older checkpoint moves the newer ones aside (.abandoned-step-...). Multi-node runs need output_dir
on a shared file system.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml

from backends.device import accelerator_rng_state, set_accelerator_rng_state

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
PATTERN = re.compile(r"^step-(\d+)$")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def _rng_state(device: torch.device) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "device": accelerator_rng_state(device)}


def _restore_rng(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    set_accelerator_rng_state(device, state["device"])


STATE_KEYS = ("step", "position", "world_size")


class DamagedCheckpoint(ValueError):
    """A checkpoint folder with a file cut short or not what it should be: the message names both."""


def read_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a complete training checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as e:                     # JSONDecodeError and UnicodeDecodeError
        raise DamagedCheckpoint(f"checkpoint {directory} is damaged: {STATE_FILE} is not valid JSON "
                                f"({' '.join(str(e).split())[:120]})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise DamagedCheckpoint(f"checkpoint {directory} is damaged: {STATE_FILE} lacks {', '.join(missing)}")
    return state


def damage(directory: str | Path) -> str | None:
    """What is wrong with a checkpoint folder, or None: trainer_state.json must be whole, every torch file (DeepSpeed's
    model and optimizer states, the RNG states) must end in its zip directory, which a file cut short anywhere
    lacks, and every JSON and YAML file must parse. Reads no tensor data."""
    directory = Path(directory)
    try:
        read_state(directory)
    except (DamagedCheckpoint, FileNotFoundError) as e:
        return str(e)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory)
        try:
            if path.suffix == ".pt":
                with zipfile.ZipFile(path) as archive:
                    archive.infolist()
            elif path.suffix == ".json":
                json.loads(path.read_bytes().decode("utf-8"))
            elif path.suffix == ".yaml":
                yaml.safe_load(path.read_bytes().decode("utf-8"))
        except (zipfile.BadZipFile, ValueError, OSError, yaml.YAMLError) as e:
            return f"checkpoint {directory} is damaged: {name} is cut short or not what it should be " \
                   f"({' '.join(str(e).split())[:120] or type(e).__name__})"
    if not any(directory.glob("*model_states.pt")):
        return f"checkpoint {directory} is damaged: it holds no model states (*model_states.pt)"
    return None


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := PATTERN.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest complete one of a run's output_dir (or its checkpoints/)."""
    path = Path(path)
    if path.name.startswith("."):
        raise ValueError(f"{path} is an incomplete checkpoint (a run stopped while writing or replacing it)")
    if (path / STATE_FILE).is_file():
        problem = damage(path)
        if problem:
            raise DamagedCheckpoint(f"{problem}; give another checkpoint")
        return path
    for root in (path / "checkpoints", path):
        found = complete_checkpoints(root)
        if found:
            return newest_sound(found)
    raise FileNotFoundError(f"no complete training checkpoint in {path}")


def newest_sound(found: list[Path]) -> Path:
    """The newest of `found` (oldest first) that is not damaged; each damaged newer one is a warning."""
    problems = []
    for folder in reversed(found):
        problem = damage(folder)
        if problem is None:
            for broken in problems:
                log.warning("%s: using the previous complete checkpoint, %s", broken, folder.name)
            return folder
        problems.append(problem)
    raise DamagedCheckpoint(f"every checkpoint in {found[0].parent} is damaged ({problems[0]}); "
                            f"start a new run (a new output_dir) or restore one from a copy")


def _discard(folder: Path, why: str) -> None:
    """Remove a checkpoint folder so that no crash leaves it looking complete: rename it first, then delete."""
    hidden = folder.with_name(f".partial-{why}-{folder.name}")
    os.replace(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


class Checkpoints:
    def __init__(self, root: str | Path, group, keep_last: int):
        self.root, self.group, self.keep_last = Path(root), group, keep_last

    def clean_partial(self) -> None:
        """Remove the .partial- folders a crashed run left (main process, before anyone writes)."""
        if self.group.is_main and self.root.is_dir():
            for p in self.root.glob(".partial-*"):
                log.warning("removing incomplete checkpoint %s (a run stopped while writing it)", p)
                shutil.rmtree(p, ignore_errors=True)
        self.group.barrier()

    def set_aside_newer(self, folder: Path) -> None:
        """Resuming an older checkpoint: move the newer ones of this run out of the way (not deleted)."""
        step = int(PATTERN.match(folder.name).group(1)) if PATTERN.match(folder.name) else read_state(folder)["step"]
        if self.group.is_main:
            for newer in complete_checkpoints(self.root):
                if int(PATTERN.match(newer.name).group(1)) > step:    # its name: a damaged one has no sound state
                    aside = newer.with_name(f".abandoned-{newer.name}")
                    log.warning("resuming %s: moving the newer %s to %s", folder.name, newer.name, aside.name)
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(newer, aside)
        self.group.barrier()

    def save(self, engine, step: int, state: dict, write_extra) -> Path:
        """Write checkpoint `step` (every process calls this); `write_extra(folder)` runs on the main one."""
        name = step_name(step)
        partial = self.root / f".partial-{name}"
        engine.save_checkpoint(str(self.root), tag=partial.name, client_state={"ppllava": state}, save_latest=False)
        error = None
        try:
            torch.save(_rng_state(self.group.device), partial / f"rng-rank{self.group.rank}.pt")
            if self.group.is_main:
                write_extra(partial)
                (partial / STATE_FILE).write_text(json.dumps({**state, "world_size": self.group.world_size}, indent=1))
        except OSError as e:
            error = e
        if self.group.sum([float(error is not None)])[0]:      # every shard is on disk, or everyone stops
            raise error or OSError(f"another process could not write its part of checkpoint {name} (see its log)")
        final = self.root / name
        if self.group.is_main:
            if final.exists():                                 # the same step saved again after a resume
                _discard(final, "replaced")
            os.replace(partial, final)
            for old in complete_checkpoints(self.root)[:-self.keep_last]:
                _discard(old, "pruned")
            log.info("saved checkpoint %s", final)
        self.group.barrier()
        return final

    def load(self, engine, folder: Path) -> dict:
        """Restore model, optimizer, scheduler and this process's RNG; returns the trainer state."""
        state = read_state(folder)
        check_world_size(state, folder, self.group)
        mine = folder / f"rng-rank{self.group.rank}.pt"
        if self.group.sum([float(not mine.is_file())])[0]:
            raise FileNotFoundError(f"checkpoint {folder}: some processes do not see their files (rng-rank<R>.pt): "
                                    f"output_dir must be on a file system every node shares")
        loaded, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        if loaded is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {folder}")
        _restore_rng(torch.load(mine, weights_only=False), self.group.device)
        return state


def check_world_size(state: dict, folder: Path, group) -> None:
    if state["world_size"] != group.world_size:
        raise ValueError(f"checkpoint {folder} was written by {state['world_size']} processes, this run has "
                         f"{group.world_size}: resume with the same world size (or export it and start a "
                         f"new run from the exported model)")


def choose_checkpoint(checkpoints: Checkpoints, resume: str, check) -> Path | None:
    """The checkpoint a run resumes from: `resume` is auto (the newest complete one), none (refuse a folder that
    has checkpoints) or a folder. The main process decides for all; `check(folder)` vets the chosen one, then its
    world size must be this run's."""
    group = checkpoints.group
    checkpoints.clean_partial()
    existing = complete_checkpoints(checkpoints.root)
    if resume == "none" and group.from_main(bool(existing)):
        raise ValueError(f"{checkpoints.root} already holds checkpoints and resume=none: "
                         f"choose a new output_dir, or resume=auto")
    choice = ""
    if resume != "none" and group.is_main:
        found = find_checkpoint(resume) if resume != "auto" else newest_sound(existing) if existing else None
        choice = str(found or "")
    folder = group.from_main(choice)
    if not folder:
        return None
    check(Path(folder))
    check_world_size(read_state(folder), folder, group)         # before the model loads, not after
    return Path(folder)

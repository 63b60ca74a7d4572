"""Training checkpoints: written atomically, the last N kept, the newest complete one resumed.

    <output_dir>/checkpoints/step-000500/   DeepSpeed's shards (model, optimizer, scheduler), one
                                            rng-rank<R>.pt per process, trainer_state.json (step, data
                                            position, world size, precision), and the model's
                                            config.json and tokenizers, so `ppllava export` needs
                                            nothing else
    <output_dir>/checkpoints/.partial-step-000500/   the same while it is written

Every process writes its part into the .partial- folder; after a barrier the main process renames it.
A crash at any moment leaves either a complete step- folder or a .partial- one, which is never
resumed (and is removed by the next run); folders are deleted the same way, renamed first. Resuming
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
from pathlib import Path

import numpy as np
import torch

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


def read_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a complete training checkpoint (no {STATE_FILE})")
    return json.loads(path.read_text())


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
        return path
    for root in (path / "checkpoints", path):
        found = complete_checkpoints(root)
        if found:
            return found[-1]
    raise FileNotFoundError(f"no complete training checkpoint in {path}")


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
        step = read_state(folder)["step"]
        if self.group.is_main:
            for newer in complete_checkpoints(self.root):
                if read_state(newer)["step"] > step:
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
        found = find_checkpoint(resume) if resume != "auto" else (existing or [None])[-1]
        choice = str(found or "")
    folder = group.from_main(choice)
    if not folder:
        return None
    check(Path(folder))
    check_world_size(read_state(folder), folder, group)         # before the model loads, not after
    return Path(folder)

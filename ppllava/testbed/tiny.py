"""What configs/train/tiny.yaml trains: a tiny random checkpoint and a few synthetic clips, in one folder.

    ppllava testbed tiny --out build/tiny          # then: ppllava train --config configs/train/tiny.yaml

writes build/tiny/model (ppllava.model.tiny: the `tiny` architecture, tokenizers trained offline) and
build/tiny/data (the test bed's moving shapes, python -m ppllava.testbed.synthetic, its train split and
data.yaml). Each part is written to a temporary folder and renamed when complete, so a rerun finishes
what an interrupted one left and keeps what is there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import UserError


def _part(folder: Path, marker: str, write) -> bool:
    """Write `folder` with `write(tmp)` unless it is complete (holds `marker`); True if it was written now."""
    if (folder / marker).is_file():
        return False
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder} exists but holds no {marker}: remove it, or give another --out")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.partial-") as tmp:
        write(Path(tmp) / folder.name)
        if folder.exists():
            folder.rmdir()
        os.replace(Path(tmp) / folder.name, folder)
    return True


def write_tiny(out: str | Path, clips: int = 16, seed: int = 0) -> dict:
    """out/model and out/data (the tiny recipe's model= and data=); returns what was written and where."""
    from ..model.tiny import save_tiny_checkpoint
    from .synthetic import write_testbed

    if clips < 1:
        raise UserError(f"--clips {clips}: give at least 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    wrote = {"model": _part(out / "model", "config.json", lambda d: save_tiny_checkpoint(d, seed=seed)),
             "data": _part(out / "data", "data.yaml", lambda d: write_testbed(d, seed, train=clips, val=0, test=0))}
    return {"model": out / "model", "data": out / "data" / "data.yaml", "written": [k for k, v in wrote.items() if v]}

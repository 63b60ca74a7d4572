"""`ppllava testbed tiny` then `ppllava train --config configs/train/tiny.yaml`, as the recipe says, in a fresh folder:
the model and data it writes train (few steps), the checkpoint records the frames it trained with, and a rerun keeps
what is complete (issue 21)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[1]


def ppllava(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning",
           "TORCH_EXTENSIONS_DIR": str(ROOT / "build" / "torch_extensions")}
    return subprocess.run([sys.executable, "-m", "ppllava", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def test_testbed_tiny_writes_what_the_tiny_recipe_trains(tmp_path):
    made = ppllava(["testbed", "tiny", "--out", "build/tiny", "--clips", "4"], tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == ["wrote build/tiny/model", "wrote build/tiny/data/data.yaml",
                                        "next: ppllava train --config configs/train/tiny.yaml"]
    again = ppllava(["testbed", "tiny", "--out", "build/tiny", "--clips", "4"], tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("kept build/tiny/model\nkept build/tiny/data/data.yaml")
    trained = ppllava(["train", "--config", str(ROOT / "configs" / "train" / "tiny.yaml"), "max_steps=2",
                       "log_every=1"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = tmp_path / "build" / "tiny" / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] == r["loss"] and r["samples"] == 4 for r in rows)
    config = json.loads((run / "checkpoints" / "step-000002" / "config.json").read_text())
    assert config["default_frames"] == 4                      # the recipe's frames, infer's default from now on
    assert "16 samples" in trained.stdout + trained.stderr     # 4 clips x 4 records

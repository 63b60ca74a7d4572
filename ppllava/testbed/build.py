"""Make the test bed's tiny checkpoint from a fixed seed: data, tower alignment, instruction tuning.

    python -m ppllava.testbed.build --out checkpoints/testbed      # about 5 minutes on a 2-core CPU

Stages, each written to its own folder under --work (default build/testbed) and skipped on a rerun
once complete, so an interrupted build goes on where it stopped:
    data/     the synthetic clips (train / val / test splits, python -m ppllava.testbed.synthetic)
    init/     a random `testbed` architecture (configs/model/testbed.yaml), tokenizers trained on the
              test bed's sentences
    aligned/  stage 1: the vision and prompt towers aligned on frame/caption pairs (align.py)
    run/      stage 2: `ppllava train --config configs/train/testbed.yaml` (DeepSpeed, one process)
then `ppllava export` of the last checkpoint to --out, and the test split's accuracy per pooling mode
to <out>/scores.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from backends.device import REPRODUCIBLE_ENV
from ppllava.model.checkpoint import PROMPT_TOKENIZER_DIR, load_model, load_tokenizers, save_weights
from ppllava.model.tiny import CORPUS, save_tiny_checkpoint

from . import synthetic
from .align import AlignConfig, align

log = logging.getLogger("ppllava.testbed.build")
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "train" / "testbed.yaml"
ARCHITECTURE, VOCAB = "testbed", 480
SPLITS = {"train": 1000, "val": 50, "test": 100}


def tokenizer_corpus() -> list[str]:
    return CORPUS + synthetic.corpus() + ["You are a helpful assistant."]


def write_data(folder: Path, seed: int, splits: dict) -> Path:
    if not (folder / "data.yaml").is_file():
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.partial-") as tmp:
            synthetic.write_testbed(tmp, seed, **splits)
            os.replace(tmp, folder)
    return folder


def write_aligned(folder: Path, init: Path, data: Path, config: AlignConfig) -> Path:
    if (folder / "config.json").is_file():
        return folder
    model = load_model(init, torch.float32)
    tokenizer, prompt_tokenizer = load_tokenizers(init)
    align(model, prompt_tokenizer, synthetic.load_scenes(data, "train"), config)
    torch.manual_seed(config.seed)      # LLaVA's projector init (PyTorch's default), which keeps the features' scale
    for layer in (model.multi_modal_projector.linear_1, model.multi_modal_projector.linear_2):
        layer.reset_parameters()
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.partial-") as tmp:
        save_weights(model.config, model.state_dict(), tmp, torch.float32, "aligned model")
        tokenizer.save_pretrained(tmp)
        prompt_tokenizer.save_pretrained(Path(tmp) / PROMPT_TOKENIZER_DIR)
        os.replace(tmp, folder)
    return folder


def run(command: list[str]) -> None:
    log.info("running %s", " ".join(command))
    subprocess.run(command, check=True, env={**REPRODUCIBLE_ENV, **os.environ})   # stage 2 reruns bit for bit


def build(out: Path, work: Path, seed: int = 0, splits: dict = SPLITS, align_config: AlignConfig | None = None,
          overrides: list[str] = ()) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} already exists and is not empty; choose a new folder or remove it")
    times = {}
    start = time.perf_counter()
    data = write_data(work / "data", seed, splits)
    times["data"] = time.perf_counter() - start
    init = work / "init"
    if not (init / "config.json").is_file():
        save_tiny_checkpoint(init, seed, tokenizer_corpus(), ARCHITECTURE, VOCAB)
    start = time.perf_counter()
    aligned = write_aligned(work / "aligned", init, data, align_config or AlignConfig(seed=seed))
    times["align"] = time.perf_counter() - start
    start = time.perf_counter()
    python = sys.executable
    run([python, "-m", "ppllava", "train", "--config", str(RECIPE), f"model={aligned}", f"data={data / 'data.yaml'}",
         f"output_dir={work / 'run'}", f"seed={seed}", *overrides])
    times["train"] = time.perf_counter() - start
    run([python, "-m", "ppllava", "export", "--checkpoint", str(work / "run"), "--out", str(out)])
    start = time.perf_counter()
    from ppllava.infer import Pipeline
    from .score import MODES, score

    pipeline = Pipeline.load(out, device="cpu", frames=synthetic.DEFAULT_FRAMES)
    results = score(pipeline, data, "test", MODES)
    times["score"] = time.perf_counter() - start
    summary = {"seed": seed, "splits": splits, "seconds": times,
               "test": {mode: {k: v for k, v in r.items() if k != "rows"} for mode, r in results.items()}}
    (out / "scores.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppllava.testbed.build", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="the checkpoint folder to write (new or empty)")
    parser.add_argument("--work", type=Path, default=Path("build/testbed"), help="stage folders (reused on a rerun)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--align-steps", type=int, default=AlignConfig.steps, help="stage 1 optimizer steps")
    for split, n in SPLITS.items():
        parser.add_argument(f"--{split}", type=int, default=n, help=f"clips in the {split} split (default {n})")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="changes to the stage 2 recipe")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    splits = {split: getattr(args, split) for split in SPLITS}
    summary = build(args.out, args.work, args.seed, splits, AlignConfig(steps=args.align_steps, seed=args.seed),
                    args.overrides)
    print(json.dumps(summary["test"], indent=1))
    return 0


if __name__ == "__main__":
    missing = {k: v for k, v in REPRODUCIBLE_ENV.items() if k not in os.environ}
    if missing:      # MKL reads its switch when it loads: start again with it, so that every stage reruns bit for bit
        os.execve(sys.executable, [sys.executable, "-m", "ppllava.testbed.build", *sys.argv[1:]], {**os.environ, **missing})
    sys.exit(main())

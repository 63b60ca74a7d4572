"""`ppllava train` and `ppllava export`: DeepSpeed training from a recipe, and its checkpoints as a model."""

from __future__ import annotations

import argparse
import sys

TRAIN_EPILOG = """\
examples:
  # one process (CPU, or one accelerator)
  ppllava train --config configs/train/tiny.yaml model=build/tiny/model data=build/tiny/data.yaml output_dir=runs/tiny
  # 8 processes on one node
  torchrun --nproc-per-node 8 -m ppllava train --config configs/train/llava-video-7b.yaml output_dir=runs/lv7b
  # several nodes: see `ppllava launch --help` and launch/README.md

Overrides are key=value with YAML values (lr=1e-5, deepspeed=zero3, model_overrides.video_kernel=[2,3,3]).
Rerunning the same command resumes from the newest complete checkpoint in output_dir (resume=auto);
SIGTERM (e.g. Slurm's time limit) saves a checkpoint after the current step, then stops with exit code 143.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train PPLLaVA with DeepSpeed (ZeRO-2/3) from a recipe",
                       description="Instruction-tune PPLLaVA on the DeepSpeed engine: ZeRO-2 or ZeRO-3, bf16, gradient "
                                   "checkpointing and accumulation, warmup + cosine schedule, atomic checkpoints. "
                                   "Run it directly for one process, or under torchrun / `ppllava launch` for many.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="a recipe YAML (configs/train/*.yaml); fields in ppllava/train/config.py")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe fields to set or change")
    p.set_defaults(run=run_train)

    e = sub.add_parser("export", help="consolidate a training checkpoint into a Hugging Face model folder",
                       description="Merge the ZeRO-2/3 shards of a training checkpoint into one safetensors folder with "
                                   "its config and tokenizers, loadable for inference on any device.")
    e.add_argument("--checkpoint", required=True,
                   help="a checkpoint folder (…/checkpoints/step-000500) or a run's output_dir (its newest checkpoint)")
    e.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    e.add_argument("--dtype", default=None,
                   help="float32, bfloat16 or float16 (default: the precision the run trained in)")
    e.set_defaults(run=run_export)


def run_train(args) -> int:
    from ppllava.train import NonFiniteLoss, load_train_config, train

    cfg = load_train_config(args.config, args.overrides)
    try:
        result = train(cfg)
    except NonFiniteLoss as e:
        print(f"ppllava train: stopped: {e}", file=sys.stderr)
        return 1
    return 143 if result["stopped"] else 0        # 128 + SIGTERM: stopped early, checkpoint saved


def run_export(args) -> int:
    from ppllava.train import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, args.dtype)
    print(f"wrote {out}")
    return 0

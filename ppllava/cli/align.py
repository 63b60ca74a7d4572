"""`ppllava align`: contrastive alignment of a CLIP text tower to a frozen InternViT (the InternVL3 base)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  ppllava align --config configs/align/internvl3-8b.yaml vision=ckpt/InternVL3-8B-hf text=ckpt/clip-vit-large-patch14 \\
      data=data/laion-wukong-10m/ output_dir=runs/align-internvl3-8b
  torchrun --nproc-per-node 8 -m ppllava align --config configs/align/internvl3-8b.yaml
  ppllava convert --base ckpt/InternVL3-8B-hf --text-tower runs/align-internvl3-8b/text_tower --out ckpt/ppllava-internvl3-8b

Overrides are key=value with YAML values (lr=5e-4, loss=clip, eval_data=pairs/val.jsonl).
Rerunning the same command resumes from the newest complete checkpoint in output_dir (resume=auto).
SIGTERM (e.g. Slurm's time limit) saves a checkpoint after the current step, then stops with exit code 143.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("align", help="align a CLIP text tower to a frozen InternViT (contrastive, DeepSpeed)",
                       description="One contrastive pass (SigLIP's sigmoid or CLIP's InfoNCE loss, gathered across "
                                   "processes) that trains a CLIP text tower and the patch projection PPLLaVA's "
                                   "relevance map uses against the frozen vision tower of an InternVL checkpoint, on "
                                   "image-text pairs from a .jsonl/.tsv list or a folder of tar shards. Writes "
                                   "<output_dir>/text_tower for `ppllava convert`.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="a recipe YAML (configs/align/*.yaml); fields in ppllava/align/config.py")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe fields to set or change")
    p.set_defaults(run=run)


def run(args) -> int:
    from ppllava.align.config import load_align_config
    from ppllava.align.loop import align
    from ppllava.train import NonFiniteLoss

    cfg = load_align_config(args.config, args.overrides)
    try:
        result = align(cfg)                         # prints where the text tower went (main process)
    except NonFiniteLoss as e:
        print(f"ppllava align: stopped: {e}", file=sys.stderr)
        return 1
    return 143 if result["stopped"] else 0         # 128 + SIGTERM: stopped early, checkpoint saved

"""The DeepSpeed config of a run: configs/deepspeed/<name>.yaml plus what the recipe decides."""

from __future__ import annotations

from ..errors import read_yaml
from .config import TrainConfig

RECIPE_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
               "bf16", "fp16", "gradient_clipping", "optimizer", "scheduler")


def deepspeed_config(cfg: TrainConfig, accumulation: int, world_size: int) -> dict:
    """`cfg`: a TrainConfig, or any recipe with deepspeed_path(), micro_batch_size, grad_clip and precision
    (`ppllava align`'s AlignConfig)."""
    path = cfg.deepspeed_path()
    ds = read_yaml(path) or {}
    if not isinstance(ds, dict):
        raise ValueError(f"{path}: expected a mapping (DeepSpeed's config schema)")
    clash = [k for k in RECIPE_KEYS if k in ds]
    if clash:
        raise ValueError(f"{path}: {', '.join(clash)} come from the training recipe (batch sizes, precision, "
                         f"grad_clip; the optimizer and schedule are ppllava's): remove them from the DeepSpeed config")
    ds.update(train_batch_size=cfg.micro_batch_size * accumulation * world_size,
              train_micro_batch_size_per_gpu=cfg.micro_batch_size,
              gradient_accumulation_steps=accumulation,
              gradient_clipping=cfg.grad_clip,
              bf16={"enabled": cfg.precision == "bf16"},
              fp16={"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16})
    return ds

"""AdamW over the model's trainable parameter groups, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower() or "embedding" in name.lower()


def param_groups(model, lr: float, weight_decay: float, group_lr: dict[str, float]) -> list[dict]:
    """One optimizer group per (model group, decay or not) that trains: biases, norms, embeddings don't decay."""
    out = []
    for group, named in model.parameter_groups().items():
        for decays in (True, False):
            params = [p for n, p in named if p.requires_grad and _no_decay(n, p) != decays]
            if params:
                out.append({"params": params, "lr": group_lr.get(group, lr), "name": f"{group}{'' if decays else '/no_decay'}",
                            "weight_decay": weight_decay if decays else 0.0})
    if not out:
        raise ValueError("nothing to train: every parameter group is frozen (see the model config's train_* switches)")
    return out


def build_optimizer(model, lr: float, weight_decay: float, betas: tuple[float, float],
                    group_lr: dict[str, float]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, group_lr), lr=lr, betas=betas)


class WarmupCosine:
    """lr factor: linear from 0 to 1 over `warmup` steps, then cosine down to 0 at `total` steps."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_steps(total: int, ratio: float) -> int:
    return math.ceil(total * ratio)


def scheduler_factory(total: int, warmup_ratio: float):
    """The lr_scheduler argument of deepspeed.initialize: built on the (wrapped) optimizer."""
    schedule = WarmupCosine(warmup_steps(total, warmup_ratio), total)
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

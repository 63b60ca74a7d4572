"""The alignment recipe: a YAML file of AlignConfig fields, plus `key=value` overrides (as `ppllava train`).

    ppllava align --config configs/align/internvl3-8b.yaml vision=ckpt/InternVL3-8B-hf data=pairs/ lr=5e-4

Contrastive negatives come from one micro-batch on every process (micro_batch_size x processes);
accumulation, when global_batch_size asks for it, only sums the gradients of several such batches.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from ..train.config import PRECISIONS, Recipe, read_recipe
from .losses import LOSSES


@dataclass
class AlignConfig(Recipe):
    vision: str                         # an InternVL checkpoint folder (transformers' InternVLForConditionalGeneration)
    text: str                           # the CLIP text tower to start from (CLIPModel or CLIPTextModelWithProjection
                                        #   folder, with its tokenizer)
    data: str                           # image-text pairs: a .jsonl / .tsv list or a folder of .tar shards
    output_dir: str                     # checkpoints/, metrics.jsonl, text_tower/ (the result)
    eval_data: str | None = None        # held-out pairs: image -> caption retrieval before and after
    loss: str = "siglip"                # siglip (sigmoid, learnable scale and bias) | clip (InfoNCE)
    vision_feature_layer: int = -1      # the vision features PPLLaVA will pool (InternVL's own: -1, CLS dropped)
    vision_feature_select_strategy: str = "default"
    deepspeed: str = "zero2"            # configs/deepspeed/<name>.yaml or a path; ZeRO-3 is not supported
    precision: str = "bf16"
    global_batch_size: int = 1024
    micro_batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.98)
    warmup_ratio: float = 0.05
    epochs: float = 1.0
    max_steps: int | None = None
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    max_logit_scale: float = 100.0      # exp(logit_scale) is clamped to this after every step, as open_clip does
    max_skip_fraction: float = 0.01     # unreadable pairs allowed per pass before the run stops
    workers: int = 4
    seed: int = 42
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    resume: str = "auto"

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        def bad(name, why):
            raise ValueError(f"align config: {name} {why}, got {getattr(self, name)!r}")

        for name in ("vision", "text", "data", "output_dir", "deepspeed", "resume"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                bad(name, "must be a non-empty string")
        if self.eval_data is not None and (not isinstance(self.eval_data, str) or not self.eval_data):
            bad("eval_data", "must be a path or null")
        choices = {"loss": tuple(LOSSES), "precision": PRECISIONS, "vision_feature_select_strategy": ("default", "full")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {', '.join(allowed)}")
        for name, low in (("global_batch_size", 1), ("micro_batch_size", 1), ("log_every", 1), ("save_every", 1),
                          ("keep_last", 1), ("workers", 0), ("seed", 0), ("max_steps", 1), ("vision_feature_layer", None)):
            value = getattr(self, name)
            if name == "max_steps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                bad(name, "must be an int" + (f" >= {low}" if low is not None else ""))
        for name, low, high in (("lr", 0, math.inf), ("epochs", 0, math.inf), ("weight_decay", 0, math.inf),
                                ("grad_clip", 0, math.inf), ("warmup_ratio", 0, 1), ("max_skip_fraction", 0, 1),
                                ("max_logit_scale", 1, math.inf)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high \
                    or (name in ("lr", "epochs") and value == 0):
                bad(name, f"must be a number in [{low}, {high})" + (" and > 0" if name in ("lr", "epochs") else ""))
        self.check_shared(bad)


FLOATS = ("lr", "weight_decay", "warmup_ratio", "epochs", "grad_clip", "max_logit_scale", "max_skip_fraction")


def load_align_config(path: str | Path | None, overrides=()) -> AlignConfig:
    """The recipe at `path` (or nothing) with `overrides` applied on top."""
    raw, where = read_recipe(path, overrides, AlignConfig, "align config")
    names = {f.name for f in dataclasses.fields(AlignConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    missing = [n for n in ("vision", "text", "data", "output_dir") if raw.get(n) in (None, "")]
    if missing:
        raise ValueError(f"{where}: {', '.join(missing)} must be set (in the file or as key=value)")
    for key in FLOATS:                                   # YAML reads 5e-4 as a string
        if isinstance(raw.get(key), str):
            try:
                raw[key] = float(raw[key])
            except ValueError:
                raise ValueError(f"{where}: {key} must be a number, got {raw[key]!r}") from None
    return AlignConfig(**raw)

"""The frozen vision tower `ppllava align` aligns a text tower to: InternViT, read from an InternVL checkpoint.

Only the vision tower's tensors are read from the checkpoint's safetensors files (an InternVL3-8B folder
is mostly its LLM), under either key layout transformers writes (`vision_tower.` or `model.vision_tower.`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import InternVLConfig, InternVLVisionModel

from ..model.towers import FAMILIES

PREFIXES = ("vision_tower.", "model.vision_tower.")


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / n for n in names]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def load_vision_tower(directory: str | Path, dtype: torch.dtype = torch.float32):
    """(InternVLVisionModel with the checkpoint's weights, frozen and in eval mode; the InternVLConfig)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"vision {directory}: no config.json (expected a local InternVL checkpoint folder)")
    model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    if model_type != "internvl":
        raise ValueError(f"vision {directory} is a {model_type!r} model; `ppllava align` aligns to the vision tower "
                         f"of an InternVL checkpoint in transformers' format (model_type 'internvl')")
    config = InternVLConfig.from_pretrained(directory)
    state = {}
    for path in _weight_files(directory):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                prefix = next((p for p in PREFIXES if key.startswith(p)), None)
                if prefix:
                    state[key[len(prefix):]] = f.get_tensor(key)
    model = InternVLVisionModel(config.vision_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"vision {directory}: the vision tower's weights do not fit its config (missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.requires_grad_(False)
    return model.to(dtype).eval(), config


@torch.no_grad()
def patch_tokens(vision: InternVLVisionModel, pixel_values: torch.Tensor, layer: int, strategy: str) -> torch.Tensor:
    """(B, 3, S, S) -> (B, P, D): the features PPLLaVA pools on InternVL (CLS dropped for 'default')."""
    features = FAMILIES["internvl"].feature_layer(vision, pixel_values.to(vision.dtype), layer)
    return features[:, 1:] if strategy == "default" else features

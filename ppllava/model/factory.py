"""Architectures as data: configs/model/<name>.yaml -> PPLLaVAConfig -> a model.

A YAML file holds PPLLaVAConfig's fields. Its prompt_config describes the pretrained text tower
(max_position_embeddings 77 for CLIP, 64 for SigLIP); `prompt_context_extension: [keep, stretch]`
asks for the extended tower, so the config gets stretch * L - (stretch - 1) * keep positions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import read_yaml
from .config import PPLLaVAConfig
from .context import extended_length
from .modeling import PPLLaVAForConditionalGeneration

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"


def available_architectures() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"model config {path} does not exist")
        return path
    path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown model architecture {str(name_or_path)!r}; known: {', '.join(available_architectures())} "
                         f"(or pass a .yaml file)")
    return path


def config_from_dict(data: dict, source: str = "config") -> PPLLaVAConfig:
    fields = {f.name for f in dataclasses.fields(PPLLaVAConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)} for PPLLaVAConfig")
    data = dict(data)
    extension = data.get("prompt_context_extension")
    if extension is not None:
        keep, stretch = extension
        prompt = dict(data["prompt_config"])
        prompt["max_position_embeddings"] = extended_length(prompt["max_position_embeddings"], keep, stretch)
        data["prompt_config"] = prompt
    return PPLLaVAConfig(**data)


def load_config(name_or_path: str | Path) -> PPLLaVAConfig:
    """A PPLLaVAConfig from an architecture name (configs/model/<name>.yaml) or a YAML path."""
    path = _resolve(name_or_path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of PPLLaVAConfig fields")
    return config_from_dict(data, str(path))


def build_model(name_or_path: str | Path | PPLLaVAConfig, seed: int | None = None,
                dtype: torch.dtype | None = None) -> PPLLaVAForConditionalGeneration:
    """A randomly initialised model (same weights for the same seed on every machine: built on the CPU)."""
    config = name_or_path if isinstance(name_or_path, PPLLaVAConfig) else load_config(name_or_path)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = PPLLaVAForConditionalGeneration(config)
    return model.to(dtype) if dtype is not None else model

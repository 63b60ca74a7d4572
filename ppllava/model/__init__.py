"""The PPLLaVA model on transformers: config, modules, the architecture factory and conversion."""

from transformers import AutoConfig, AutoModelForImageTextToText

from .aligned import AlignedTextTower, AlignedTextTowerConfig
from .checkpoint import load_model
from .config import PPLLaVAConfig
from .context import encode_prompts, extend_positions, extended_length
from .factory import available_architectures, build_model, load_config
from .modeling import MultiModalProjector, PPLLaVAForConditionalGeneration
from .pooling import PromptGuidedPooling
from .towers import FAMILIES

# public registration API: AutoConfig / AutoModelForImageTextToText.from_pretrained find a saved PPLLaVA
AutoConfig.register(PPLLaVAConfig.model_type, PPLLaVAConfig, exist_ok=True)
AutoModelForImageTextToText.register(PPLLaVAConfig, PPLLaVAForConditionalGeneration, exist_ok=True)
AutoConfig.register(AlignedTextTowerConfig.model_type, AlignedTextTowerConfig, exist_ok=True)

from .. import processing  # noqa: E402,F401  (PPLLaVAProcessor registers itself with AutoProcessor)

__all__ = [
    "PPLLaVAConfig", "PPLLaVAForConditionalGeneration", "AlignedTextTower", "AlignedTextTowerConfig", "PromptGuidedPooling", "MultiModalProjector",
    "FAMILIES", "available_architectures", "build_model", "load_config", "load_model",
    "encode_prompts", "extend_positions", "extended_length",
]

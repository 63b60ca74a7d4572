"""Build PPLLaVA from a base multimodal model and its paired dual encoder (plug-and-play migration).

    base (LLaVA-NeXT: CLIP ViT + Llama; LLaVA-OneVision / LLaVA-Video: SigLIP + Qwen2;
          InternVL3: InternViT + Qwen2.5, transformers' InternVLForConditionalGeneration)
        vision tower, MLP projector, LLM          -> kept as they are (InternVL: its pixel shuffle too)
    text tower (the paired CLIP / SigLIP dual model; for InternVL the tower `ppllava align` wrote)
        text tower + text projection              -> prompt tower, positions extended
        vision post-LayerNorm + visual projection -> per-patch projection for the relevance map
          (InternVL: the aligned LayerNorm + linear)
        exp(logit_scale)                          -> config.relevance_scale
Everything is read from local folders; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import logging as hf_logging
from transformers import (AutoTokenizer, InternVLForConditionalGeneration, LlavaNextForConditionalGeneration,
                          LlavaOnevisionForConditionalGeneration)

from ..data import ChatEncoder
from ..data.preprocess import PRESETS
from ..errors import UserError, read_json
from ..processing import write_processor_config
from .chat_format import base_chat_template, base_image_processing, check_processor_tokens, visual_wrap_tokens
from .checkpoint import PROMPT_TOKENIZER_DIR, check_shapes, save_weights
from .config import PPLLaVAConfig, side
from .context import KEEP, STRETCH, extend_positions, extended_length
from .mapping import Ledger, Rule, UnmappedTensor
from .towers import family_of_dual, family_of_vision

log = logging.getLogger(__name__)


def _llava_fields(base_config) -> dict:
    """LLaVA's projector runs on every patch before the pooling, as the paper's released models do: the projector
    was trained on single patches, and it adds 2.7% to a 32-frame video's FLOPs at 7B (README, Converting)."""
    return {"project_before_pooling": True}


def _internvl_fields(base_config) -> dict:
    """InternVL merges 2x2 patches (downsample_ratio 0.5) before its LayerNorm + MLP projector. Its 448-px
    frames then give 16x16 tokens, which the (2,3,3) kernel would not tile (the last row and column would be
    dropped): (2,2,2) / (1,2,2), as configs/model/internvl3-8b.yaml."""
    ratio = base_config.downsample_ratio
    merge = round(1 / ratio)
    if abs(merge * ratio - 1) > 1e-6:
        raise ValueError(f"InternVL downsample_ratio {ratio}: only 1/n ratios (0.5, 0.25, ...) are supported")
    return {"pixel_shuffle": merge, "projector_layer_norm": True, "video_kernel": [2, 2, 2], "image_kernel": [1, 2, 2]}


BASE_RULES = (
    Rule("model.vision_tower.", "vision_tower.", "the base's vision tower, as it is"),
    Rule("model.multi_modal_projector.", "multi_modal_projector.", "the base's projector, as it is"),
    Rule("model.language_model.", "language_model.model.", "the base's LLM, as it is"),
    Rule("lm_head.", "language_model.lm_head.", "the base's LLM head, as it is"),
)
IMAGE_NEWLINE = Rule("model.image_newline", None, "LLaVA's image_newline (a learned token after each row of its 2D "
                                                  "image layout): PPLLaVA pools a 3D grid that has no row ends")


@dataclass(frozen=True)
class BaseArchitecture:
    model_type: str
    model_class: type
    rules: tuple[Rule, ...] = BASE_RULES    # where each base tensor goes (model/mapping.py)
    config_fields: Callable[[object], dict] = _llava_fields  # PPLLaVAConfig fields the base's config decides


BASES = {b.model_type: b for b in (
    BaseArchitecture("llava_next", LlavaNextForConditionalGeneration, (*BASE_RULES, IMAGE_NEWLINE)),
    BaseArchitecture("llava_onevision", LlavaOnevisionForConditionalGeneration, (*BASE_RULES, IMAGE_NEWLINE)),
    BaseArchitecture("internvl", InternVLForConditionalGeneration, config_fields=_internvl_fields),
)}
REPORT = "conversion.json"
# what a Hub folder's tokenizer is read from: the fast tokenizer's file or a slow tokenizer's vocabulary
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt")


def read_config(directory: str | Path, role: str) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{role} {directory}: no config.json (expected a local Hugging Face model folder)")
    config = read_json(path, f"{role} {directory}: ")
    if not isinstance(config, dict):
        raise UserError(f"{role} {directory}: {path} holds no JSON object; expected a model's config")
    return config


def base_architecture(config: dict) -> BaseArchitecture:
    model_type = config.get("model_type")
    if model_type not in BASES:
        raise ValueError(f"unknown base architecture {model_type!r}; supported: {', '.join(BASES)}")
    return BASES[model_type]


def build_config(base, dual, keep: int, stretch: int, fields: dict | None = None) -> PPLLaVAConfig:
    """The PPLLaVA config of a loaded base model and dual encoder, or a ValueError naming the mismatch."""
    family = family_of_dual(dual.config.model_type)
    vision_family = family_of_vision(base.config.vision_config.model_type)
    if vision_family is not family:
        raise ValueError(f"the base's vision tower is {base.config.vision_config.model_type!r} but the text tower "
                         f"comes from a {dual.config.model_type!r} model: they must be one pair")
    base_hidden, dual_hidden = base.config.vision_config.hidden_size, dual.config.vision_config.hidden_size
    if base_hidden != dual_hidden:
        raise ValueError(f"vision hidden size mismatch: the base's vision tower has {base_hidden}, the text tower's "
                         f"paired vision model {dual_hidden}; this is not the base's paired text tower")
    layer = base.config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"the base uses vision features from several layers {layer}; PPLLaVA pools one layer")
    aligned = getattr(dual.config, "vision_feature_layer", layer), getattr(dual.config, "vision_feature_select_strategy",
                                                                         base.config.vision_feature_select_strategy)
    if aligned != (layer, base.config.vision_feature_select_strategy):
        raise ValueError(f"the text tower was aligned on vision features {aligned} (layer, select strategy) but the "
                         f"base uses {(layer, base.config.vision_feature_select_strategy)}: align on the base's features")
    prompt = dual.config.text_config.to_dict()
    prompt["max_position_embeddings"] = extended_length(prompt["max_position_embeddings"], keep, stretch)
    return PPLLaVAConfig(
        vision_config=base.config.vision_config.to_dict(),
        prompt_config=prompt,
        text_config=base.config.text_config.to_dict(),
        vision_feature_layer=layer,
        vision_feature_select_strategy=base.config.vision_feature_select_strategy,
        projector_hidden_act=base.config.projector_hidden_act,
        multimodal_projector_bias=getattr(base.config, "multimodal_projector_bias", True),
        image_token_id=base.config.image_token_id,
        video_token_id=getattr(base.config, "video_token_id", None),
        prompt_context_extension=[keep, stretch],
        prompt_frozen_positions=keep,              # the pretrained rows stay as they are in training (Long-CLIP)
        relevance_scale=float(dual.logit_scale.detach().float().exp()),
        **BASES[base.config.model_type].config_fields(base.config),
        **(fields or {}),
    )


def build_state(base, dual, config: PPLLaVAConfig, keep: int, stretch: int) -> Ledger:
    """The PPLLaVA state dict of a loaded base and dual model, and the record of where every tensor went."""
    family = config.tower_family()
    ledger = Ledger()
    ledger.apply("base", base.state_dict(), BASES[base.config.model_type].rules)
    ledger.apply("text tower", dual.state_dict(), family.dual_rules)
    position_key = "prompt_pooling.prompt_tower." + family.position_embedding_path + ".weight"
    table = ledger.state[position_key]
    ledger.state[position_key] = extend_positions(table, keep, stretch)
    source = next(r["name"] for r in ledger.rows if r.get("to") == position_key)
    ledger.note("text tower", source, f"positions extended {len(table)} -> {len(ledger.state[position_key])} "
                                      f"(first {keep} kept, stretched {stretch}x beyond)")
    check_shapes(config, {k: tuple(v.shape) for k, v in ledger.state.items()}, "the converted state")
    return ledger


def _load(model_class, directory, role: str, **kwargs):
    """from_pretrained that refuses a folder whose tensors do not fit the architecture exactly: a missing tensor
    would silently be random, an unexpected one silently dropped."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()                # its load report: the error below says the same in one line
    try:
        model, info = model_class.from_pretrained(directory, output_loading_info=True, ignore_mismatched_sizes=True,
                                                  **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    for kind, what in (("missing_keys", "lacks tensors its config.json needs (they would be random)"),
                       ("unexpected_keys", "holds tensors its config.json's architecture does not have"),
                       ("mismatched_keys", "holds tensors of other shapes than its config.json says")):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(kind) or ())
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            raise UnmappedTensor(f"{role} {directory} {what}: {', '.join(names[:3])}{more}")
    return model


def _load_tokenizer(source, role: str):
    """A folder's tokenizer; a folder without a usable one cannot answer, so that is an error, not a warning."""
    if not any((Path(source) / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build an empty tokenizer of the config's class from nothing
        raise ValueError(f"{role} {source}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, ImportError, TypeError, KeyError) as e:
        cause = " ".join(str(e).split())[:300]
        raise ValueError(f"{role} {source}: its tokenizer cannot be loaded ({type(e).__name__}: {cause})") from e


def check_out(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not an empty folder; choose a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def write_checkpoint(out: Path, base_dir, tokenizer, prompt_tokenizer, config: PPLLaVAConfig, ledger: Ledger,
                     dtype: torch.dtype, report: dict) -> None:
    """The converted folder: tokenizers, processor config, weights, conversion.json and the base's generation
    config, written beside `out` and moved there whole (the folder appears complete or not at all)."""
    prompt_tokenizer.model_max_length = config.prompt_config.max_position_embeddings
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.partial-") as tmp:
        tokenizer.save_pretrained(tmp)
        prompt_tokenizer.save_pretrained(Path(tmp) / PROMPT_TOKENIZER_DIR)
        write_processor_config(tmp)                      # AutoProcessor.from_pretrained finds PPLLaVAProcessor
        save_weights(config, ledger.state, tmp, dtype, "converted weights")
        report = {**report, "summary": ledger.summary(), "tensors": ledger.rows}
        (Path(tmp) / REPORT).write_text(json.dumps(report, indent=1), encoding="utf-8")
        if (Path(base_dir) / "generation_config.json").is_file():   # the base's stop tokens and defaults
            shutil.copy2(Path(base_dir) / "generation_config.json", Path(tmp) / "generation_config.json")
        if out.exists():
            out.rmdir()                                  # empty (checked by check_out)
        os.replace(tmp, out)
    log.info("convert: %s (every row in %s)", ledger.summary(), out / REPORT)


def convert(base_dir, text_tower_dir, out_dir, keep: int = KEEP, stretch: int = STRETCH,
            dtype: torch.dtype | None = None) -> PPLLaVAConfig:
    """Write a PPLLaVA checkpoint (config, safetensors, tokenizers) to out_dir; returns its config."""
    out = check_out(out_dir)
    base_config = read_config(base_dir, "base")
    from .authors import authors_layout, convert_authors      # it builds on this module's writer
    if authors_layout(base_dir):
        if (keep, stretch) != (KEEP, STRETCH):
            raise ValueError(f"--keep/--stretch: {base_dir} is one of the authors' checkpoints, whose trained position "
                             f"table is the {KEEP}/{STRETCH}x extension; it cannot be extended otherwise")
        return convert_authors(base_dir, base_config, text_tower_dir, out, dtype)
    base_type = base_config.get("model_type")
    architecture = base_architecture({"model_type": base_type})
    family = family_of_dual(read_config(text_tower_dir, "text tower").get("model_type"))
    # the tokenizers and the chat format first: they fail in a second, the weights take minutes to load
    tokenizer, prompt_tokenizer = _load_tokenizer(base_dir, "base"), _load_tokenizer(text_tower_dir, "text tower")
    template, template_source = base_chat_template(base_dir, tokenizer, base_type)
    tokenizer.chat_template = template
    base = _load(architecture.model_class, base_dir, "base", dtype=dtype or "auto")
    dual = _load(family.dual_class, text_tower_dir, "text tower", dtype=base.dtype)
    crop, mean, std = PRESETS[base.config.vision_config.model_type]
    image_fields, image_source = base_image_processing(base_dir, side(base.config.vision_config.image_size), crop,
                                                       (mean, std))
    config = build_config(base, dual, keep, stretch, {**visual_wrap_tokens(tokenizer, base_type), **image_fields})
    check_processor_tokens(base_dir, tokenizer, config.image_token_id, config.video_token_id)
    config.dtype = base.dtype
    encoder = ChatEncoder.for_config(tokenizer, config)       # the base's template writes our placeholders
    ledger = build_state(base, dual, config, keep, stretch)
    report = {"base": str(base_dir), "text_tower": str(text_tower_dir), "dtype": str(base.dtype).removeprefix("torch."),
              "relevance_scale": config.relevance_scale, "chat_template": template_source,
              "image_processing": image_source, "content": encoder.style}
    write_checkpoint(out, base_dir, tokenizer, prompt_tokenizer, config, ledger, base.dtype, report)
    return config

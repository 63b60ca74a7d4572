"""The chat format a converted checkpoint keeps: the base's own template, read from the files the Hub ships.

Where a base keeps its multimodal template differs: the llava-hf repos in the processor's
`chat_template.json` ({"chat_template": ...}) while their tokenizer_config.json may hold the LLM's text-only
template (LLaVA-OneVision keeps Qwen2's), InternVL3-hf in `chat_template.jinja`. The processor's file wins,
then the tokenizer's own template; a base with none gets its family's default (chat_templates/), by name,
and the choice is printed. The visual start/end tokens are InternVL's <img> ... </img> around each run.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

DEFAULT_TEMPLATES = {"llava_next": "llava-vicuna", "llava_onevision": "llava-chatml", "internvl": "internvl-chatml"}


def default_template(name: str) -> str:
    return (resources.files(__package__) / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def _from_json(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a JSON file ({e})") from e
    template = data.get("chat_template") if isinstance(data, dict) else None
    if isinstance(template, dict):                 # named templates: the default one
        template = template.get("default")
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"{path} holds no chat template (expected {{\"chat_template\": \"...\"}})")
    return template


def base_chat_template(base_dir: str | Path, tokenizer, model_type: str) -> tuple[str, str]:
    """(template, where it came from) for a base folder and its loaded tokenizer."""
    base = Path(base_dir)
    if (base / "chat_template.jinja").is_file():
        return (base / "chat_template.jinja").read_text(encoding="utf-8"), "chat_template.jinja"
    if (base / "chat_template.json").is_file():
        return _from_json(base / "chat_template.json"), "chat_template.json (the processor's)"
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default")
    if isinstance(own, str) and own.strip():
        return own, "tokenizer_config.json"
    name = DEFAULT_TEMPLATES[model_type]
    return default_template(name), f"none shipped: the {model_type} default {name!r} (ppllava/model/chat_templates/)"


def visual_wrap_tokens(tokenizer, model_type: str) -> dict:
    """InternVL's tokens around each item's placeholder run (<img>, </img>): its processor writes them, so the
    LLM was trained with them. The tokenizer names them (extra special tokens) or holds them as tokens."""
    if model_type != "internvl":
        return {}
    ids = []
    for attribute, default in (("start_image_token", "<img>"), ("end_image_token", "</img>")):
        token = getattr(tokenizer, attribute, None) or default
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id or token not in tokenizer.get_vocab():
            raise ValueError(f"the InternVL base's tokenizer has no {token!r} token ({attribute}): InternVL wraps each "
                             f"image's tokens in <img> ... </img>")
        ids.append(token_id)
    return {"visual_start_token_id": ids[0], "visual_end_token_id": ids[1]}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a JSON file ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _sizes(value) -> set[int]:
    if isinstance(value, dict):
        return {int(v) for k, v in value.items() if k in ("height", "width", "shortest_edge") and v}
    return {int(value)} if value else set()


def base_image_processing(base_dir: str | Path, image_size: int, crop: bool, preset: tuple) -> tuple[dict, str]:
    """PPLLaVAConfig fields from the base's preprocessor_config.json (its normalisation, where it differs from
    the family preset), after checking that its resize is the one PPLLaVA does (bicubic to the vision tower's
    image size, centre-cropped for CLIP, squashed to a square otherwise). (fields, where they came from)."""
    path = Path(base_dir) / "preprocessor_config.json"
    if not path.is_file():
        return {}, "none shipped: the tower family's preset"
    data = _read_json(path)
    sizes = _sizes(data.get("size")) | _sizes(data.get("crop_size"))
    if sizes - {image_size}:
        raise ValueError(f"{path}: resizes to {sorted(sizes)} but the vision tower takes {image_size} px images")
    if data.get("resample", 3) != 3:
        raise ValueError(f"{path}: resample {data['resample']}; PPLLaVA resizes with bicubic (3) only")
    if bool(data.get("do_center_crop")) != crop:
        raise ValueError(f"{path}: do_center_crop {data.get('do_center_crop')} but this tower family "
                         f"{'crops' if crop else 'squashes to a square'}")
    fields = {}
    for key, default in (("image_mean", preset[0]), ("image_std", preset[1])):
        value = data.get(key)
        if value is not None and [round(float(v), 8) for v in value] != [round(v, 8) for v in default]:
            fields[key] = [float(v) for v in value]
    return fields, "preprocessor_config.json" + (" (its own normalisation)" if fields else "")


def check_processor_tokens(base_dir: str | Path, tokenizer, image_token_id: int, video_token_id: int | None) -> None:
    """The image/video token strings of the base's processor_config.json are the model's placeholder ids."""
    path = Path(base_dir) / "processor_config.json"
    if not path.is_file():
        return
    data = _read_json(path)
    for key, token_id in (("image_token", image_token_id), ("video_token", video_token_id)):
        token = data.get(key)
        if token is None or token_id is None:
            continue
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise ValueError(f"{path}: {key} {token!r} is token {tokenizer.convert_tokens_to_ids(token)} of the "
                             f"tokenizer, but the base's config uses {token_id}")

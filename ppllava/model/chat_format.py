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

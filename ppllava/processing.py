"""PPLLaVAProcessor: a question and frames to model inputs, the transformers way, for every path.

    import ppllava.model                                   # registers PPLLaVA with the Auto classes, this too
    processor = AutoProcessor.from_pretrained("./ckpt/ppllava-ov-7b")      # a local folder: nothing is downloaded
    model = AutoModelForImageTextToText.from_pretrained("./ckpt/ppllava-ov-7b")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, videos=[frames])     # uint8 (T, H, W, 3)
    out = model.generate(**inputs, max_new_tokens=64, do_sample=False)

or in two steps: `text = processor.apply_chat_template(messages, add_generation_prompt=True)`, then
`processor(text=text, videos=[frames], prompt="What happens?")`; the prompt tower reads `prompt` (the user
questions, as in training; apply_chat_template with tokenize=True takes them from the messages).

The inputs: input_ids with each medium's mark expanded to its placeholder run, attention_mask,
pixel_values (every frame of every medium, in order), visual_frames / visual_is_video / visual_sample
(the layout of the media), prompt_input_ids / prompt_attention_mask. `Pipeline` (and through it
`ppllava eval` and the lmms-eval adapter) builds its inputs with the same methods.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor

from .conversation import pooling_prompt
from .model.anyres import grid_shape
from .model.checkpoint import PROMPT_TOKENIZER_DIR, load_tokenizers, read_config
from .model.config import PPLLaVAConfig
from .model.context import encode_prompts

PROCESSOR_CONFIG = "processor_config.json"


def _frames(value, what: str) -> torch.Tensor:
    """uint8 (T, H, W, 3) from a tensor / array of that shape (or (H, W, 3) for one image), or a list of frames."""
    if isinstance(value, (list, tuple)):
        value = np.stack([np.asarray(v) for v in value])
    tensor = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 RGB frames (T, H, W, 3), got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor


class MediaInputs:
    """What a model reads of each medium, without the tokenizers: the pieces of PPLLaVAProcessor that the training
    dataset (data/dataset.py) uses too, so that a sample is trained on the crops, placeholder runs and image sizes
    it is served with."""

    def __init__(self, config):
        from .data.preprocess import Preprocessor      # not at import: ppllava.model registers PPLLaVAProcessor

        self.config = config
        self.preprocess = Preprocessor.for_config(config)

    def medium(self, frames: torch.Tensor | int, is_video: bool, image_size=None) -> tuple[int, bool, tuple | None]:
        """(frames or crops the model reads, is_video, image size): a single image of a model with
        image_grid_pinpoints is cut into LLaVA-NeXT's anyres crops (Preprocessor.anyres)."""
        if isinstance(frames, int):
            return frames, is_video, image_size
        if not is_video and len(frames) == 1 and self.config.image_grid_pinpoints:
            size = tuple(int(v) for v in frames.shape[1:3])
            rows, cols = grid_shape(size, self.config.image_grid_pinpoints, self.preprocess.size)
            return 1 + rows * cols, False, size
        return len(frames), is_video, None

    def runs(self, media: list[tuple]) -> list[list[int]]:
        """Each medium's placeholder run: media are (frames or their number, is_video[, image size])."""
        return [self.config.placeholders(*self.medium(*m)) for m in media]

    def layout(self, media: list[tuple]) -> dict[str, torch.Tensor]:
        """Which frames belong to which medium, all of one sample (and the image size of anyres images)."""
        items = [self.medium(*m) for m in media]
        out = {"visual_frames": torch.tensor([n for n, _, _ in items]),
               "visual_is_video": torch.tensor([v for _, v, _ in items]),
               "visual_sample": torch.zeros(len(items), dtype=torch.long)}
        if any(size for _, _, size in items):
            out["visual_image_size"] = torch.tensor([size or (0, 0) for _, _, size in items])
        return out

    def pixels(self, frames: torch.Tensor, is_video: bool) -> torch.Tensor:
        """One medium's pixel values: its frames preprocessed, or an anyres image's crops."""
        if self.medium(frames, is_video)[2] is not None:
            return self.preprocess.anyres(frames, self.config.image_grid_pinpoints)
        return self.preprocess(frames)


class PPLLaVAProcessor(MediaInputs):
    def __init__(self, tokenizer, prompt_tokenizer, config):
        from .data import ChatEncoder                  # not at import: ppllava.model registers this class

        super().__init__(config)
        self.tokenizer, self.prompt_tokenizer = tokenizer, prompt_tokenizer
        self.encoder = ChatEncoder.for_config(tokenizer, config)
        self.pad_prompts = config.tower_family().pad_prompts_to_max
        self.chat_template = tokenizer.chat_template

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> "PPLLaVAProcessor":
        config = read_config(directory)
        return cls(*load_tokenizers(directory), config)

    def save_pretrained(self, directory: str | Path, **kwargs) -> None:
        directory = Path(directory)
        self.tokenizer.save_pretrained(directory)
        self.prompt_tokenizer.save_pretrained(directory / PROMPT_TOKENIZER_DIR)
        write_processor_config(directory)

    # -- text -------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = False,
                            return_dict: bool = False, videos=None, images=None, return_tensors: str = "pt", **kwargs):
        """The base's own chat format; with tokenize=True the model inputs (the media in the order the messages
        hold them: images from `images`, videos from `videos`)."""
        if not tokenize:
            return self.encoder.render(messages, add_generation_prompt=add_generation_prompt)
        media = _media_in_order(messages, videos, images)
        inputs = self.encode(messages, media, pooling_prompt(messages), add_generation_prompt)
        return inputs if return_dict else inputs["input_ids"]

    def __call__(self, text: str | list[str] | None = None, videos=None, images=None, prompt: str | None = None,
                 return_tensors: str = "pt", **kwargs) -> dict:
        """Inputs for a rendered conversation `text` (from apply_chat_template) holding one mark per medium: the
        videos' marks are filled in order from `videos`, the images' from `images`."""
        if isinstance(text, (list, tuple)):
            if len(text) != 1:
                raise ValueError("PPLLaVAProcessor takes one conversation at a time")
            text = text[0]
        if not isinstance(text, str):
            raise ValueError("text: the rendered conversation (processor.apply_chat_template(messages, ...))")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        marks = _marks(ids, self.encoder, videos, images)
        media = _media_in_order([{"role": "user", "content": [{"type": kind} for kind in marks]}], videos, images)
        if media and prompt is None:
            raise ValueError("prompt: the user's question(s) the prompt tower reads is needed with media "
                             "(or call apply_chat_template(messages, tokenize=True, return_dict=True, ...))")
        return self._inputs(self.encoder.expand(ids, self.runs(media)), media, prompt)

    # -- the pieces every path uses (with MediaInputs' medium, runs, layout and pixels) -----------------------
    def prompt_inputs(self, text: str) -> dict[str, torch.Tensor]:
        """The prompt tower's ids for `text` (its length: the extended one; SigLIP padded to it)."""
        prompt = encode_prompts(self.prompt_tokenizer, [text], self.config.prompt_config.max_position_embeddings,
                                self.pad_prompts)
        return {"prompt_input_ids": prompt["input_ids"], "prompt_attention_mask": prompt["attention_mask"]}

    def text_inputs(self, messages, media: list[tuple[torch.Tensor | int, bool]],
                    add_generation_prompt: bool = True) -> dict[str, torch.Tensor]:
        """input_ids (placeholders expanded) and attention_mask of one conversation, a batch of one."""
        ids = self.encoder.encode(messages, self.runs(media), add_generation_prompt=add_generation_prompt).input_ids
        return _batch_of_one(ids)

    def encode(self, messages, media: list[tuple[torch.Tensor, bool]], prompt: str,
               add_generation_prompt: bool = True) -> dict:
        ids = self.encoder.encode(messages, self.runs(media), add_generation_prompt=add_generation_prompt).input_ids
        return self._inputs(ids, media, prompt)

    def _inputs(self, ids: torch.Tensor, media: list[tuple[torch.Tensor, bool]], prompt: str | None) -> dict:
        out = _batch_of_one(ids)
        if not media:
            return out
        pixels = torch.cat([self.pixels(frames, is_video) for frames, is_video in media])
        return {**out, "pixel_values": pixels, **self.layout(media), **self.prompt_inputs(prompt)}


def _batch_of_one(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": ids[None], "attention_mask": torch.ones_like(ids[None])}


def _marks(ids: list[int], encoder, videos, images) -> list[str]:
    """The kinds of the media marks in `ids`, in order. Where images and videos share one mark (a model without
    a video token) the media given say which: videos or images, not both."""
    image, video = encoder.ids["image"], encoder.ids["video"]
    if image == video:
        if videos and images:
            raise ValueError("this model writes images and videos with one mark: pass videos or images, not both "
                             "(or use apply_chat_template(messages, tokenize=True, ...), which knows the order)")
        shared = "video" if videos else "image"
        return [shared for t in ids if t == image]
    return ["image" if t == image else "video" for t in ids if t in (image, video)]


def write_processor_config(directory: str | Path) -> None:
    """processor_config.json naming PPLLaVAProcessor, so that AutoProcessor finds it."""
    (Path(directory) / PROCESSOR_CONFIG).write_text(json.dumps({"processor_class": PPLLaVAProcessor.__name__},
                                                               indent=2) + "\n", encoding="utf-8")


def _media_in_order(messages, videos, images) -> list[tuple[torch.Tensor, bool]]:
    pending = {"video": list(videos or []), "image": list(images or [])}
    media = []
    for message in messages:
        if isinstance(message["content"], str):
            continue
        for part in message["content"]:
            if part["type"] in pending:
                if not pending[part["type"]]:
                    raise ValueError(f"the messages hold more {part['type']}s than were given")
                media.append((_frames(pending[part["type"]].pop(0), f"{part['type']}s"), part["type"] == "video"))
    left = {k: len(v) for k, v in pending.items() if v}
    if left:
        raise ValueError(f"more media than the messages mark: {left}")
    return media


AutoProcessor.register(PPLLaVAConfig, PPLLaVAProcessor, exist_ok=True)

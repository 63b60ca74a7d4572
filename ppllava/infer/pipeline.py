"""Inference: a checkpoint on any device answering questions about a video or an image.

    pipe = Pipeline.load("ckpt/ppllava-lv7b", device="auto", dtype="bfloat16")
    visual = pipe.read("clip.mp4")                  # decoded, preprocessed, through the vision tower once
    chat = pipe.chat(visual)
    chat.ask("What is the man holding?").text
    chat.ask("And what does he do with it?")        # the same frames, pooled again for the new question

The vision tower's patch features of a visual are computed once and cached in the Visual; each
question re-runs only the prompt tower, the relevance map, the pooling and the LLM, since
prompt-guided pooling depends on the question (the prompt tower reads the user questions so far).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import backends
from backends.device import dtype_from_name, resolve_device, synchronize

from ..conversation import pooling_prompt
from ..data import DataError, get_reader, read_image
from ..data.readers import IMAGE_SUFFIXES as FRAME_SUFFIXES
from ..data.readers import FrameFolderReader
from ..data.sampling import frame_window, read_clip
from ..model.checkpoint import load_model, load_tokenizers, read_config
from ..processing import PPLLaVAProcessor
from .decode import greedy_rows

IMAGE_SUFFIXES = (*FRAME_SUFFIXES, ".gif")          # a file read as one image (a GIF: its first frame)


@dataclass
class Visual:
    """One video (or image), read and encoded by the vision tower once."""
    path: str
    is_video: bool
    indices: list[int]                  # the sampled frame indices (images: [0])
    frames: torch.Tensor                # uint8 (T, H, W, 3) as decoded, for pictures
    patches: torch.Tensor               # (T, g, g, Dv) vision features on the model's device (anyres: of each crop)
    seconds: dict = field(default_factory=dict)
    image_size: tuple[int, int] | None = None   # (H, W) of an image the model reads as LLaVA-NeXT's anyres crops


@dataclass
class Answer:
    text: str
    tokens: int                         # generated tokens of the answer (the stop token not counted)
    visual_tokens: int                  # tokens the visual became in the LLM's input
    seconds: dict                       # prefill (to the first token) and generate (all tokens)
    ids: list[int] = field(default_factory=list)    # the answer's token ids (the stop token not counted)


DEFAULT_FRAMES = 32  # frames per video of a checkpoint that does not say what it was trained with
TEXT_ROOM = 64  # positions a question and its template need at the least beside the visual tokens


def check_frame_budget(config, frames: int) -> None:
    """A video of `frames` frames must fit a BT-Adapter's time embedding and leave the LLM room for a question:
    refused before decoding anything. The count is the config's, a visual token budget (video_max_tokens /
    video_pooled_size) included. Only videos: an image (or its anyres crops) never meets the time embedding."""
    if frames < config.min_video_frames():
        raise ValueError(f"--frames {frames} is fewer than the video kernel's {config.min_video_frames()} frames")
    if config.btadapter_depth and frames > config.btadapter_max_frames:
        raise ValueError(f"--frames {frames}: a video of {frames} frames is longer than the BT-Adapter's time "
                         f"embedding of {config.btadapter_max_frames} frames (btadapter_max_frames); give at most "
                         f"{config.btadapter_max_frames}")
    limit = config.text_config.max_position_embeddings
    if config.visual_tokens(frames, True) + TEXT_ROOM <= limit:
        return
    low, high = config.min_video_frames(), frames               # the most frames that fit, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if config.visual_tokens(mid, True) + TEXT_ROOM <= limit else (low, mid - 1)
    fits = (f"at most {low} frames fit" if config.visual_tokens(low, True) + TEXT_ROOM <= limit else
            "no frame count fits")
    hint = "" if config.video_budget else "; or give a token budget (--max-visual-tokens)"
    raise ValueError(f"--frames {frames}: a video of {frames} frames becomes {config.visual_tokens(frames, True)} "
                     f"visual tokens, beyond the LLM's {limit} positions (less {TEXT_ROOM} for the question); {fits}"
                     f"{hint}")


def default_frames(config) -> int:
    """Frames per video when the run gives none: those the checkpoint was trained with, else DEFAULT_FRAMES, or
    as many as a BT-Adapter's time embedding holds when that is fewer."""
    if getattr(config, "default_frames", None):
        return config.default_frames
    return min(DEFAULT_FRAMES, config.btadapter_max_frames) if config.btadapter_depth else DEFAULT_FRAMES


def apply_budget(config, max_visual_tokens: int | None = None, pooled_size=None) -> None:
    """Pool videos to a visual token budget (a run's choice, as --max-visual-tokens / --pooled-size): sets
    config.video_max_tokens or video_pooled_size (replacing the other) and checks it."""
    if max_visual_tokens is None and pooled_size is None:
        return
    config.video_max_tokens = max_visual_tokens
    config.video_pooled_size = list(pooled_size) if pooled_size is not None else None
    config.check()


class Pipeline:
    def __init__(self, model, tokenizer, prompt_tokenizer, device: torch.device, frames: int = 32, reader: str = "auto"):
        self.model, self.tokenizer, self.prompt_tokenizer = model.eval(), tokenizer, prompt_tokenizer
        self.config, self.device, self.frames, self.reader_name = model.config, device, frames, reader
        self.processor = PPLLaVAProcessor(tokenizer, prompt_tokenizer, model.config)   # the one path to inputs
        self.encoder, self.preprocess = self.processor.encoder, self.processor.preprocess
        self.stop_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        """Tokens that end an answer: the tokenizer's and the LLM's EOS, and the token the chat template
        closes an assistant turn with (<|im_end|>, <|eot_id|>, ...), whichever of them exist."""
        ids: list[int] = []
        configs = [getattr(m, "generation_config", None) for m in (self.model, self.model.language_model)]
        for value in (self.tokenizer.eos_token_id, self.config.text_config.eos_token_id,
                      *(getattr(c, "eos_token_id", None) for c in configs)):
            ids += value if isinstance(value, list) else [] if value is None else [value]
        turn_end = self.encoder.turn_end_token()
        return list(dict.fromkeys(ids + ([turn_end] if turn_end is not None else [])))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = None,
             frames: int | None = None, reader: str = "auto", max_visual_tokens: int | None = None,
             pooled_size=None) -> "Pipeline":
        """A PPLLaVA checkpoint folder (convert, or export of a training run) on `device` in `dtype`
        (default: the checkpoint's own); `frames` per video default to default_frames(config).
        `max_visual_tokens` or `pooled_size` (T', H', W'): pool every video to that budget (config.py
        video_max_tokens / video_pooled_size) instead of the checkpoint's own pooling."""
        if frames is not None and frames < 1:
            raise ValueError(f"--frames must be >= 1, got {frames}")
        device = resolve_device(device)
        get_reader(reader)                                       # an unknown reader or a missing library: now
        config = read_config(directory)                          # one clear error for a folder that is not ours
        apply_budget(config, max_visual_tokens, pooled_size)
        frames = frames or default_frames(config)
        check_frame_budget(config, frames)                       # before any weight is read or frame decoded
        tokenizer, prompt_tokenizer = load_tokenizers(directory) # before the weights: fail fast
        # a prompt beyond the prompt tower's positions is truncated with our own warning (model/context.py): not
        # transformers' too
        prompt_tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
        dtype = dtype_from_name(dtype) if isinstance(dtype, str) else dtype
        model = load_model(directory, dtype=dtype, config=config).to(device)      # the budget in its config
        return cls(model, tokenizer, prompt_tokenizer, device, frames, reader)

    # -- visuals -----------------------------------------------------------------------------------
    def read(self, path: str | Path, frames: int | None = None, window: tuple[float | None, float | None] = (None, None),
             fps: float | None = None) -> Visual:
        """Decode `frames` evenly spaced frames (segment centres) of a video, or one image, and encode them.

        window: (start, end) seconds to sample inside; fps: the frame rate of a folder of frames."""
        path = str(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
        is_video = not path.lower().endswith(IMAGE_SUFFIXES)
        if is_video:                                                 # an image is one frame (or its anyres crops)
            check_frame_budget(self.config, frames or self.frames)
        start = time.perf_counter()
        if not is_video:
            pixels, indices = read_image(path), [0]
        else:
            reader = FrameFolderReader(fps) if os.path.isdir(path) else get_reader(self.reader_name)
            with reader.open(path) as clip:
                span = frame_window(clip.num_frames, clip.fps, *window, path=path) if window != (None, None) else None
                pixels, indices = read_clip(clip, frames or self.frames, train=False, window=span)
        decoded = time.perf_counter()
        patches = self.encode_frames(pixels, is_video)
        synchronize(self.device)
        return Visual(path, is_video, indices, pixels, patches,
                      {"decode": decoded - start, "vision": time.perf_counter() - decoded},
                      self.processor.medium(pixels, is_video)[2])

    def from_frames(self, frames: torch.Tensor, is_video: bool, name: str = "<frames>") -> Visual:
        """A Visual from frames already decoded: uint8 (T, H, W, 3)."""
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{name}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        start = time.perf_counter()
        patches = self.encode_frames(frames, is_video)
        synchronize(self.device)
        return Visual(name, is_video, list(range(len(frames))), frames, patches, {"vision": time.perf_counter() - start},
                      self.processor.medium(frames, is_video)[2])

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, is_video: bool = True) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> the vision tower's (T, g, g, Dv) patch features; a single image of a model with
        anyres crops -> (1 + rows*cols, g, g, Dv), each crop through the tower on its own."""
        pixel_values = self.processor.pixels(frames.to(self.device), is_video)
        alone = [1] * len(pixel_values) if self.processor.medium(frames, is_video)[2] is not None else None
        return self.model.vision_patches(pixel_values.to(self.model.dtype), alone)

    # -- questions ---------------------------------------------------------------------------------
    def inputs(self, visual: Visual | None, messages: list[dict], pooling_text: str | None = None) -> dict:
        """Model inputs for `messages` (the last one a user turn) about `visual`, ready to generate.

        The prompt tower reads the user questions so far, or `pooling_text` when given (evaluation passes
        the question and its options without the answer-format instruction)."""
        media = [self.processor.medium(visual.frames, visual.is_video)] if visual is not None else []
        out = self.processor.text_inputs(messages, media)
        if visual is not None:
            out |= self.processor.layout(media) | self.processor.prompt_inputs(pooling_text or
                                                                              self._pooling_text(messages))
        out = {k: v.to(self.device) for k, v in out.items()}
        return out | {"patches": visual.patches} if visual is not None else out

    def _pooling_text(self, messages: list[dict]) -> str:
        """The user questions so far; in a long chat the oldest go first, so the current one always fits."""
        questions = pooling_prompt(messages).split("\n")
        limit = self.config.prompt_config.max_position_embeddings
        while len(questions) > 1 and len(self.prompt_tokenizer("\n".join(questions))["input_ids"]) > limit:
            questions.pop(0)
        return "\n".join(questions)

    @torch.no_grad()
    def generate(self, visual: Visual | None, messages: list[dict], max_new_tokens: int = 256,
                 stream=None, pooling_text: str | None = None) -> Answer:
        """Greedy answer to the last user message; `stream(text_piece)` receives the text as it comes."""
        inputs = self.inputs(visual, messages, pooling_text)
        self._check_positions(inputs, max_new_tokens)
        streamer = _Streamer(self.tokenizer, stream)
        start = time.perf_counter()
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_ids)
        synchronize(self.device)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        stop = next((i for i, t in enumerate(new) if t in self.stop_ids), len(new))
        tokens = new[:stop]
        visual_tokens = int(self.model.placeholder_mask(inputs["input_ids"]).sum())
        seconds = {"first_token": (streamer.first or time.perf_counter()) - start, "generate": time.perf_counter() - start}
        return Answer(self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens), visual_tokens, seconds,
                      tokens)

    def _check_positions(self, inputs: dict, max_new_tokens: int) -> None:
        positions, limit = inputs["input_ids"].shape[1] + max_new_tokens, self.config.text_config.max_position_embeddings
        if positions > limit:
            raise DataError(f"the conversation takes {inputs['input_ids'].shape[1]} positions (with its visual tokens) "
                            f"and max_new_tokens {max_new_tokens} more: {positions} > the LLM's {limit}; use fewer "
                            f"frames, a shorter prompt or fewer new tokens")

    @torch.no_grad()
    def generate_batch(self, requests: list[tuple[Visual | None, list[dict]]], max_new_tokens: int = 256,
                       pooling_texts: list[str | None] | None = None, min_new_tokens: int = 0) -> list[Answer]:
        """Greedy answers to several conversations at once, each (visual or None, messages): the visuals pooled
        as one batch, each row's prefill on its own tokens and the decoding steps batched (infer/decode.py), each
        row cut at its own first stop token; the same tokens as generate() one at a time. Questions about one
        Visual share its vision pass (its cached patches); each row pools them for its own question.
        `min_new_tokens`: no stop token before that many (benchmarks: every row the same length)."""
        if not requests:
            return []
        texts = pooling_texts or [None] * len(requests)
        rows = [self.inputs(visual, messages, text) for (visual, messages), text in zip(requests, texts)]
        for row in rows:
            self._check_positions(row, max_new_tokens)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        length = max(r["input_ids"].shape[1] for r in rows)
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):                              # left padded: embedded as one batch, read unpadded
            input_ids[i, length - r["input_ids"].shape[1]:] = r["input_ids"][0]
        batch = {"input_ids": input_ids}
        with_visual = [i for i, r in enumerate(rows) if "patches" in r]
        if with_visual:
            # every row gets a prompt-tower row (visual_sample indexes input rows); a text-only row's is never read
            blank = self.processor.prompt_inputs(" ")
            prompts = [r if "patches" in r else {k: v.to(self.device) for k, v in blank.items()} for r in rows]
            width = max(p["prompt_input_ids"].shape[1] for p in prompts)
            prompt_pad = self.prompt_tokenizer.pad_token_id or 0
            prompt_ids = torch.full((len(rows), width), prompt_pad, dtype=torch.long, device=self.device)
            prompt_mask = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
            for i, p in enumerate(prompts):                                       # right padding, masked
                n = p["prompt_input_ids"].shape[1]
                prompt_ids[i, :n], prompt_mask[i, :n] = p["prompt_input_ids"][0], p["prompt_attention_mask"][0]
            batch |= {"patches": torch.cat([rows[i]["patches"] for i in with_visual]),
                      "visual_frames": torch.cat([rows[i]["visual_frames"] for i in with_visual]),
                      "visual_is_video": torch.cat([rows[i]["visual_is_video"] for i in with_visual]),
                      "visual_sample": torch.cat([torch.full_like(rows[i]["visual_sample"], i) for i in with_visual]),
                      "visual_image_size": torch.cat([rows[i].get("visual_image_size", torch.zeros(
                          len(rows[i]["visual_frames"]), 2, dtype=torch.long, device=self.device)) for i in with_visual]),
                      "prompt_input_ids": prompt_ids, "prompt_attention_mask": prompt_mask}
        start = time.perf_counter()
        embeds = self.model.embed_inputs(**batch)
        own = [embeds[i, length - r["input_ids"].shape[1]:] for i, r in enumerate(rows)]   # each row unpadded
        new = greedy_rows(self.model.language_model, own, max_new_tokens, self.stop_ids, min_new_tokens)
        synchronize(self.device)
        seconds = {"generate": time.perf_counter() - start, "batch": len(rows)}
        answers = []
        for r, tokens in zip(rows, new):
            visual_tokens = int(self.model.placeholder_mask(r["input_ids"]).sum())
            answers.append(Answer(self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens),
                                  visual_tokens, dict(seconds), tokens))
        return answers

    @torch.no_grad()
    def relevance(self, visual: Visual, question: str) -> torch.Tensor:
        """The relevance map the pooling uses for `question`: float32 (T, g, g), summing to 1 over the visual."""
        if self.config.pooling_mode != "prompt":
            raise ValueError(f"this checkpoint pools with pooling_mode={self.config.pooling_mode!r}, which does not "
                             f"use the prompt's relevance map")
        prompt = self.processor.prompt_inputs(pooling_prompt([_user(question, visual)]))
        pooling = self.model.prompt_pooling
        text = pooling.encode_prompt(prompt["prompt_input_ids"].to(self.device),
                                     prompt["prompt_attention_mask"].to(self.device))
        embeds = pooling.embed_patches(visual.patches)
        return backends.relevance_map(embeds[None], text, self.config.relevance_scale)[0].float().cpu()

    def ask_batch(self, questions: list[tuple[Visual | str | Path | None, str]], max_new_tokens: int = 256,
                  pooling_texts: list[str | None] | None = None, min_new_tokens: int = 0) -> list[Answer]:
        """One question each about a visual (path or Visual; one path read once) or nothing, answered together."""
        read: dict[str, Visual] = {}
        for v, _ in questions:
            if isinstance(v, (str, Path)) and str(v) not in read:
                read[str(v)] = self.read(v)
        visuals = [read[str(v)] if isinstance(v, (str, Path)) else v for v, _ in questions]
        return self.generate_batch([(v, [_user(q, v)]) for v, (_, q) in zip(visuals, questions)], max_new_tokens,
                                   pooling_texts, min_new_tokens)

    def ask(self, path_or_visual, question: str, **kwargs) -> Answer:
        """One question about a video, image (path or Visual), or nothing (None)."""
        visual = self.read(path_or_visual) if isinstance(path_or_visual, (str, Path)) else path_or_visual
        return self.generate(visual, [_user(question, visual)], **kwargs)

    def chat(self, visual: Visual | str | Path | None) -> "Chat":
        return Chat(self, self.read(visual) if isinstance(visual, (str, Path)) else visual)


class Chat:
    """A conversation about one visual: its frames are encoded once, every answer joins the history."""

    def __init__(self, pipeline: Pipeline, visual: Visual | None):
        self.pipeline, self.visual, self.messages = pipeline, visual, []

    def ask(self, question: str, **kwargs) -> Answer:
        first = not self.messages
        self.messages.append(_user(question, self.visual if first else None))
        try:
            answer = self.pipeline.generate(self.visual, self.messages, **kwargs)
        except BaseException:
            self.messages.pop()                                  # the history holds answered turns only
            raise
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": answer.text}]})
        return answer


def _user(question: str, visual: Visual | None) -> dict:
    if not question or not question.strip():
        raise ValueError("the prompt is empty: ask a question")
    parts = [{"type": "video" if visual.is_video else "image"}] if visual is not None else []
    return {"role": "user", "content": parts + [{"type": "text", "text": question.strip()}]}


class _Streamer:
    """transformers' streamer protocol: decoded text pieces to `callback` as tokens arrive."""

    def __init__(self, tokenizer, callback):
        self.tokenizer, self.callback = tokenizer, callback
        self.tokens: list[int] = []
        self.shown = 0
        self.first: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not value.numel():                  # generate() first sends the prompt's ids: none with embeddings
            return
        if self.first is None:
            self.first = time.perf_counter()
        self.tokens += value.reshape(-1).tolist()
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if self.callback is not None and not text.endswith("\ufffd"):      # wait for whole characters
            self.callback(text[self.shown:])
            self.shown = len(text)

    def end(self) -> None:
        if self.callback is not None:
            text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
            self.callback(text[self.shown:])

"""Conversations to LLM input_ids and labels through the tokenizer's own chat template.

Each medium is written into the rendered text as the tokenizer's <image> / <video> token, which must
be one token whose id is the model's image_token_id / video_token_id; after tokenizing, each is
expanded to its item's placeholder run (config.placeholders(frames, is_video)).

Labels: only the assistant turns are learned. A turn's span is found on the rendered text, between
the render of the messages before it (with the generation prompt) and the render up to it, so it
holds the answer and the template's end-of-turn tokens; every other token is -100. Where a template
writes its generation prompt otherwise than the header of a rendered turn, the span starts where the
two first differ. A template whose renders are not prefixes of each other cannot be masked this way
and is refused.

Templates that take typed content parts (the llava-hf and InternVL ones) get the media as parts
({"type": "image"} / {"type": "video"}) and write the marks themselves, where the base puts them;
templates that take plain strings get the marks joined to the text with newlines.

Maximum length, counted after placeholder expansion: trailing turns are dropped (a user message and
the answers after it) while more than one answered turn is left and the dropped turns hold no media;
a sample still too long raises TooLong (the training data skips and counts it; nothing is truncated
through an answer or a run of visual tokens).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import DataError

IGNORE = -100


class TooLong(DataError):
    """The shortest form of a sample (its first answered turn, all media) exceeds max_length."""


@dataclass(frozen=True)
class Encoded:
    input_ids: torch.Tensor           # (L,) long, placeholders expanded
    labels: torch.Tensor              # (L,) long, IGNORE outside the assistant turns
    messages: tuple[dict, ...]        # the messages kept (after dropping trailing turns)


PROBE = "ppllava-probe-2718"


def _text(message: dict, marks: dict[str, str]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "\n".join(marks[p["type"]] if p["type"] in marks else p["text"] for p in content)


def _parts(message: dict, video_part: str) -> list[dict]:
    content = message["content"]
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [{"type": "text", "text": p["text"]} if p["type"] == "text" else
            {"type": "image" if p["type"] == "image" else video_part} for p in content]


def _check_text(message: dict, index: int) -> None:
    """Text that is not valid Unicode (undecodable bytes of a command line, a lone surrogate of a JSON escape) is a
    DataError naming the message, before a tokenizer fails on it."""
    content = message["content"]
    texts = [content] if isinstance(content, str) else [p.get("text", "") for p in content if p.get("type") == "text"]
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(f"message {index} ({message['role']}) is not valid text: {e.reason} at character "
                            f"{e.start} ({text[max(0, e.start - 10):e.start]!r}...); pass UTF-8") from None


def content_style(tokenizer) -> str:
    """"parts" where the chat template renders typed content parts ({"type": "text", ...}, as the llava-hf and
    InternVL templates), else "string" where it renders plain-string content (as Qwen2's text template)."""
    def renders(content) -> bool:
        try:
            out = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
        except Exception:                              # a template that cannot take this form of content
            return False
        return PROBE in out and "'type'" not in out and '"type"' not in out
    if renders([{"type": "text", "text": PROBE}]):
        return "parts"
    if renders(PROBE):
        return "string"
    raise DataError("the chat template renders neither plain-string message content nor typed content parts")


def _take_run(pending: list[list[int]], token: int, total: int) -> list[int]:
    """The first pending medium of the mark's kind (a template may write a turn's images before its videos)."""
    if not pending:
        raise DataError(f"the conversation has more media marks than its {total} media")
    run = pending.pop(next((k for k, r in enumerate(pending) if token in r), 0))
    if run and token not in run:
        raise DataError(f"medium {total - len(pending) - 1}: its mark token {token} does not match its placeholder "
                        f"run of token {max(set(run), key=run.count)} (an image where a video is expected?)")
    return run


def _check_all_taken(pending: list[list[int]], runs: list[list[int]]) -> None:
    if pending:
        raise DataError(f"the conversation marks {len(runs) - len(pending)} media but {len(runs)} were given")


class ChatEncoder:
    """Render, tokenize, mask and expand conversations for one LLM tokenizer and model config."""

    def __init__(self, tokenizer, image_token_id: int, video_token_id: int | None = None,
                 image_token: str = "<image>", video_token: str = "<video>"):
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"tokenizer {type(tokenizer).__name__} has no chat template: the LLM's chat format is unknown")
        if not getattr(tokenizer, "is_fast", False):
            raise DataError("a fast tokenizer is needed (the labels are placed by character offsets)")
        self.tokenizer = tokenizer
        self.marks = {"image": image_token, "video": video_token if video_token_id is not None else image_token}
        self.ids = {"image": image_token_id, "video": video_token_id if video_token_id is not None else image_token_id}
        # videos of a model without a video token are written as images, by the template too
        self.video_part = "video" if video_token_id is not None else "image"
        for kind, mark in self.marks.items():
            got = tokenizer(f"a{mark}b", add_special_tokens=False)["input_ids"].count(self.ids[kind])
            if got != 1:
                raise DataError(f"tokenizer does not encode {mark!r} as the one token {self.ids[kind]} the model expects "
                                f"for {kind} placeholders (add it as a special token, or fix {kind}_token_id)")
        self.style = content_style(tokenizer)
        self.close_turns = self._leaves_answers_open()
        if self.style == "parts":                      # the template writes the marks itself: they must be ours
            for kind in ("image", "video"):
                message = {"role": "user", "content": [{"type": kind}, {"type": "text", "text": PROBE}]}
                ids = tokenizer(self.render([message]), add_special_tokens=False)["input_ids"]
                if ids.count(self.ids[kind]) != 1:
                    raise DataError(f"the chat template does not write a {kind} as the one token {self.ids[kind]} "
                                    f"({self.marks[kind]!r}) the model expects: {self.render([message])!r}")

    @classmethod
    def for_config(cls, tokenizer, config) -> "ChatEncoder":
        """The marks are the tokenizer's own strings of the model's placeholder ids (`<image>` for LLaVA,
        `<IMG_CONTEXT>` for InternVL)."""
        marks = {}
        for kind, token_id in (("image", config.image_token_id), ("video", config.video_token_id)):
            if token_id is None:
                continue
            token = tokenizer.convert_ids_to_tokens(token_id) if 0 <= token_id < len(tokenizer) else None
            if not token:
                raise DataError(f"the model's {kind}_token_id {token_id} is not a token of its tokenizer "
                                f"({len(tokenizer)} tokens): the tokenizer does not belong to this model")
            marks[f"{kind}_token"] = token
        return cls(tokenizer, config.image_token_id, config.video_token_id, **marks)

    def turn_end_token(self) -> int | None:
        """The special token the template closes an assistant turn with (<|im_end|>, <|eot_id|>, ...), if any."""
        marker = PROBE
        text = self.render([{"role": "user", "content": [{"type": "text", "text": "a"}]},
                            {"role": "assistant", "content": [{"type": "text", "text": marker}]}])
        end = text.rfind(marker) + len(marker)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        after = [t for t, (a, _) in zip(enc["input_ids"], enc["offset_mapping"]) if a >= end]
        special = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        special |= set(self.tokenizer.all_special_ids)
        return after[0] if after and after[0] in special else None

    def _leaves_answers_open(self) -> bool:
        """True where the template ends an answer with no special token (llava-hf's Vicuna template writes
        "ASSISTANT: answer " and the next turn): the LLM's EOS is then appended to each answer, as LLaVA trained
        it, so that the model learns to stop."""
        return self.turn_end_token() is None and self.tokenizer.eos_token_id is not None

    def render(self, messages, add_generation_prompt: bool = False) -> str:
        """The template's text of `messages`; media are typed parts where the template takes them, else marks
        joined to the text with newlines."""
        for k, message in enumerate(messages):
            _check_text(message, k)
        return self._render(messages, add_generation_prompt)

    def _render(self, messages, add_generation_prompt: bool = False) -> str:
        if self.style == "parts":
            chat = [{"role": m["role"], "content": _parts(m, self.video_part)} for m in messages]
        else:
            chat = [{"role": m["role"], "content": _text(m, self.marks)} for m in messages]
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _assistant_spans(self, messages, full: str) -> list[tuple[int, int]]:
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt, upto = self._render(messages[:k], add_generation_prompt=True), self._render(messages[:k + 1])
            start = len(os.path.commonprefix([prompt, upto]))
            consistent = full.startswith(upto)
            if start < len(prompt):
                # the template writes the generation prompt otherwise than a turn's header (llava-hf's OneVision
                # template: "assistant\n" to prompt, "assistant \n" in a turn): the span starts where they differ
                before = self._render(messages[:k])
                consistent &= upto.startswith(before)
                start = max(start, len(before))
            if not consistent:
                raise DataError("the chat template's renders of a conversation and its first turns are not prefixes "
                                "of each other: assistant turns cannot be located for the labels")
            spans.append((start, len(upto)))
        return spans

    def encode(self, messages, runs: list[list[int]], add_generation_prompt: bool = False) -> Encoded:
        """input_ids and labels of `messages`, each medium's mark expanded to its run in `runs` (in order)."""
        messages = tuple(messages)
        full = self.render(messages, add_generation_prompt)                 # checks the text, once
        spans = [] if add_generation_prompt else self._assistant_spans(messages, full)
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, labels, pending = [], [], list(runs)
        placeholder = set(self.ids.values())
        for token, (start, _) in zip(enc["input_ids"], enc["offset_mapping"]):
            if token in placeholder:
                run = _take_run(pending, token, len(runs))
                ids += run
                labels += [IGNORE] * len(run)
                continue
            answer = any(a <= start < b for a, b in spans)
            if self.close_turns and not answer and labels and labels[-1] != IGNORE:
                ids.append(self.tokenizer.eos_token_id)          # the end of an answer the template leaves open
                labels.append(self.tokenizer.eos_token_id)
            ids.append(token)
            labels.append(token if answer else IGNORE)
        if self.close_turns and labels and labels[-1] != IGNORE:
            ids.append(self.tokenizer.eos_token_id)
            labels.append(self.tokenizer.eos_token_id)
        _check_all_taken(pending, runs)
        return Encoded(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long), messages)

    def expand(self, ids: list[int], runs: list[list[int]]) -> torch.Tensor:
        """Token ids of a rendered conversation with each medium's mark replaced by its run (in order)."""
        out, pending, placeholder = [], list(runs), set(self.ids.values())
        for token in ids:
            out += _take_run(pending, token, len(runs)) if token in placeholder else [token]
        _check_all_taken(pending, runs)
        return torch.tensor(out, dtype=torch.long)

    def encode_fitting(self, messages, runs: list[list[int]], max_length: int) -> Encoded:
        """encode(), dropping trailing media-free turns to fit max_length (see the module docstring)."""
        messages = list(messages)
        while True:
            out = self.encode(messages, runs)
            if len(out.input_ids) <= max_length:
                return out
            last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
            tail = messages[last_user:]
            answered = sum(m["role"] == "assistant" for m in messages[:last_user])
            has_media = any(isinstance(m["content"], list) and any(p["type"] != "text" for p in m["content"])
                            for m in tail)
            if answered == 0 or has_media:
                raise TooLong(f"{len(out.input_ids)} tokens (with {sum(map(len, runs))} visual) exceed max_length "
                              f"{max_length} and no media-free turn is left to drop")
            messages = messages[:last_user]

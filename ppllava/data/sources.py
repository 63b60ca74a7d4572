"""Instruction-tuning data: the data config, and annotation files read into uniform samples.

A data config (YAML) lists datasets; each names its annotation file, media root, format, frames
per video and reader:

    max_length: 4096            # tokens after placeholder expansion (see chat.py for the policy)
    max_skip_fraction: 0.01     # unreadable samples tolerated per pass before the run stops
    datasets:
      - name: llava_video_178k
        format: llava           # llava | videochat2
        annotation: anno/llava_video_178k.json     # .json (a list) or .jsonl; relative to the config
        root: videos/           # media paths are relative to it; relative to the config itself
        frames: 32
        reader: auto            # auto | decord | pyav | torchcodec (frame folders are detected)
        fps: 2                  # optional: the rate frame folders were extracted at (for start/end)

Formats (one record each):
    llava      {"video" | "image": path or [paths], "conversations": [{"from": "human"|"gpt"|"system",
               "value": "<image>\\nWhat ..."}]}: <image>/<video> mark where each medium goes, in order
               (either mark for either kind: LLaVA-Video marks videos with <image>); without
               marks, the media go before the first user text.
    videochat2 {"video" | "image": path, "QA": [{"i": instruction, "q": question, "a": answer}],
               optional "start"/"end" seconds}: "i" becomes the system prompt (or the user text when
               "q" is empty), each q/a pair one turn; the media go before the first question.

A sample's messages are chat-template dicts whose content is a list of parts ({"type": "text"},
{"type": "image"}, {"type": "video"}); a video path that is a directory is a folder of frames.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import read_yaml
from .errors import DataError

FORMATS = ("llava", "videochat2")
MARKS = {"<image>": "image", "<video>": "video"}
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class Media:
    kind: str                                   # "image" or "video" (a video may be a folder of frames)
    path: str
    window: tuple[float | None, float | None] = (None, None)   # start/end seconds inside a video


@dataclass(frozen=True)
class Sample:
    media: tuple[Media, ...]
    messages: tuple[dict, ...]
    dataset: int                                # index into DataConfig.datasets
    record: int                                 # index of the record in its annotation file


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str
    annotation: str
    root: str
    frames: int = 32
    reader: str = "auto"
    fps: float | None = None                    # frame rate of frame folders (for start/end times)


@dataclass(frozen=True)
class DataConfig:
    datasets: tuple[DatasetSpec, ...]
    max_length: int = 4096
    max_skip_fraction: float = 0.01


def _checked(cls, raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {unknown} (known: {sorted(names)})")
    return raw


def load_data_config(path) -> DataConfig:
    """Read and validate a data config; relative paths in it are taken relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data config {path} does not exist")
    return data_config_from_dict(read_yaml(path) or {}, base=path.parent, where=str(path))


def data_config_from_dict(raw: dict, base=".", where: str = "data config") -> DataConfig:
    raw = dict(_checked(DataConfig, raw, where))
    entries = raw.pop("datasets", None)
    if not entries:
        raise DataError(f"{where}: 'datasets' must list at least one dataset")
    specs = []
    for i, entry in enumerate(entries):
        entry = dict(_checked(DatasetSpec, entry, f"{where}: datasets[{i}]"))
        missing = [k for k in ("name", "format", "annotation", "root") if k not in entry]
        if missing:
            raise DataError(f"{where}: datasets[{i}] needs {missing}")
        for key in ("annotation", "root"):
            entry[key] = os.path.join(base, os.path.expanduser(str(entry[key])))
        spec = DatasetSpec(**entry)
        if spec.format not in FORMATS:
            raise DataError(f"{where}: dataset {spec.name!r}: format {spec.format!r} is not one of {list(FORMATS)}")
        if spec.fps is not None and (not isinstance(spec.fps, (int, float)) or spec.fps <= 0):
            raise DataError(f"{where}: dataset {spec.name!r}: fps must be a positive number, got {spec.fps!r}")
        if not isinstance(spec.frames, int) or spec.frames < 1:
            raise DataError(f"{where}: dataset {spec.name!r}: frames must be a positive integer, got {spec.frames!r}")
        specs.append(spec)
    config = DataConfig(datasets=tuple(specs), **raw)
    if not isinstance(config.max_length, int) or config.max_length < 1:
        raise DataError(f"{where}: max_length must be a positive integer, got {config.max_length!r}")
    if not 0 <= config.max_skip_fraction <= 1:
        raise DataError(f"{where}: max_skip_fraction must be in [0, 1], got {config.max_skip_fraction!r}")
    return config


def read_records(path) -> list[dict]:
    """The records of a .json (one list) or .jsonl (one object a line) annotation file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {number}: not valid JSON ({e.msg}, column {e.colno})") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of records, got {type(records).__name__}")
    return records


def load_samples(config: DataConfig) -> list[Sample]:
    """Every record of every dataset as a Sample, in config order (a bad record is an error naming it)."""
    samples = []
    for d, spec in enumerate(config.datasets):
        parse = PARSERS[spec.format]
        for r, record in enumerate(read_records(spec.annotation)):
            try:
                media, messages = parse(record, spec.root)
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                raise DataError(f"{spec.annotation}: record {r + 1}: {_record_problem(e, spec.format)}") from None
            samples.append(Sample(tuple(media), tuple(messages), d, r))
    return samples


def _record_problem(error: Exception, format: str) -> str:
    """What a parser's error says about its record: our own ValueErrors as they are, a missing field by name, and a
    value of the wrong type (e.g. "conversations" a string) as not in the format."""
    if isinstance(error, KeyError):
        return f"no field {error.args[0]!r} (the {format} format: see ppllava/data/sources.py)"
    if isinstance(error, (TypeError, AttributeError)):
        return f"not in the {format} format ({type(error).__name__}: {error})"
    return str(error)


# -- formats ----------------------------------------------------------------------------------------
def _media(record: dict, root: str, window=(None, None)) -> list[Media]:
    present = [k for k in ("image", "video") if record.get(k)]
    if len(present) > 1:
        raise ValueError("has both 'image' and 'video'")
    if not present:
        return []
    kind = present[0]
    paths = record[kind] if isinstance(record[kind], list) else [record[kind]]
    return [Media(kind, os.path.join(root, str(p)), window) for p in paths]


def _parts(text: str) -> list[dict]:
    """Split a text at <image>/<video> marks into content parts."""
    parts, rest = [], text
    while True:
        hits = [(rest.find(m), m) for m in MARKS if m in rest]
        if not hits:
            break
        at, mark = min(hits)
        if rest[:at].strip():
            parts.append({"type": "text", "text": rest[:at].strip()})
        parts.append({"type": MARKS[mark]})
        rest = rest[at + len(mark):]
    if rest.strip():
        parts.append({"type": "text", "text": rest.strip()})
    return parts


def _check_turns(messages: list[dict]) -> None:
    """A conversation opens (after any system prompt) with a user turn and has an answer."""
    roles = [m["role"] for m in messages if m["role"] != "system"]
    if not roles or roles[0] != "user":
        raise ValueError(f"must open with a user turn (after any system prompt), got roles {roles}")
    if "assistant" not in roles:
        raise ValueError("has no assistant turn to learn from")


def _place_media(messages: list[dict], media: list[Media]) -> None:
    """Give the marks, in order, their media's kinds, or put unmarked media before the first user text.

    Only the number of marks must match: LLaVA-Video's records mark their videos with <image>."""
    _check_turns(messages)
    marks = [p for m in messages for p in m["content"] if p["type"] != "text"]
    if not marks:
        first = next(m for m in messages if m["role"] == "user")
        first["content"][:0] = [{"type": m.kind} for m in media]
    elif len(marks) != len(media):
        raise ValueError(f"{len(marks)} <image>/<video> mark(s) in the conversation for its {len(media)} media")
    for part, medium in zip(marks, media):
        part["type"] = medium.kind


def parse_llava(record: dict, root: str):
    media = _media(record, root)
    messages = []
    for turn in record["conversations"]:
        role = ROLES.get(turn["from"])
        if role is None:
            raise ValueError(f"unknown speaker {turn['from']!r} (known: {sorted(ROLES)})")
        messages.append({"role": role, "content": _parts(str(turn["value"]))})
    _place_media(messages, media)
    return media, messages


def parse_videochat2(record: dict, root: str):
    window = (record.get("start"), record.get("end"))
    media = _media(record, root, window)
    messages = []
    qa = record["QA"]
    if not qa:
        raise ValueError("'QA' is empty")
    instruction, first_q = str(qa[0].get("i") or "").strip(), str(qa[0].get("q") or "").strip()
    if instruction and first_q:
        messages.append({"role": "system", "content": [{"type": "text", "text": instruction}]})
    for turn in qa:
        question = str(turn.get("q") or "").strip() or str(turn.get("i") or "").strip()
        if not question:
            raise ValueError("a QA turn has neither 'q' nor 'i'")
        messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": str(turn["a"]).strip()}]})
    _place_media(messages, media)
    return media, messages


PARSERS = {"llava": parse_llava, "videochat2": parse_videochat2}

"""Multiple-choice video QA benchmarks, read into one form: Question(id, video, question, options, answer, category).

    mvbench    a .json list (or a folder of them, one per task: the task is the category) of
               {"video", "question", "candidates": [...], "answer": "<the right candidate's text>",
               optional "start"/"end" seconds}; with `video_root` the public layout's video folder,
               each task's videos are found in its own sub-folder (MVBENCH_FOLDERS)
    videomme   .json / .jsonl (or the published .parquet, with pyarrow installed) of {"question_id", "videoID" (or "video_id"), "question",
               "options": ["A. ...", ...], "answer": "A", "task_type", "duration"}; category task_type
    nextqa     the MC .csv: video, question, answer (0-4), qid, type, a0..a4; category type. The video
               column is an id: a map_vid_vidorID.json beside the csv (or in video_root) maps it to
               the file's relative path, as the public release ships it
    egoschema  questions .json of {"q_uid", "question", "option 0".."option 4"} (the category is "all"), with
               answers from "answer" in each record or a subset_answers.json {q_uid: index} beside the file

Video paths are relative to `video_root` (default: the folder holding the annotation file, or MVBench's
folder of task files); a name without a suffix gets `.mp4`. Every error names the file.
"""

from __future__ import annotations

import csv
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, read_json

LETTERS = "ABCDEFGHIJ"


# MVBench: where each task's videos live under the release's video folder (frame-folder tasks: fps)
MVBENCH_FOLDERS = {
    "object_interaction": "star/Charades_segment", "action_sequence": "star/Charades_segment",
    "action_prediction": "star/Charades_segment", "action_localization": "sta/sta_video_segment",
    "moving_count": "clevrer/video_validation", "fine_grained_pose": "nturgbd_convert",
    "character_order": "perception/videos", "object_shuffle": "perception/videos", "egocentric_navigation": "vlnqa",
    "moving_direction": "clevrer/video_validation", "episodic_reasoning": "tvqa/video_fps3_hq_segment",
    "fine_grained_action": "Moments_in_Time_Raw/videos", "scene_transition": "scene_qa/video",
    "state_change": "perception/videos", "moving_attribute": "clevrer/video_validation",
    "action_antonym": "ssv2_video_mp4", "unexpected_action": "FunQA_test/test",
    "counterfactual_inference": "clevrer/video_validation", "object_existence": "clevrer/video_validation",
    "action_count": "perception/videos",
}
FRAME_FOLDER_FPS = {"episodic_reasoning": 3.0}


@dataclass(frozen=True)
class Question:
    id: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: int | None              # index of the right option (None: unknown, e.g. a hidden test split)
    category: str
    window: tuple[float | None, float | None] = (None, None)   # start/end seconds inside the video
    fps: float | None = None        # frame rate of a folder of frames (for the window)
    group: str | None = None        # a second breakdown: Video-MME's duration (short / medium / long)


def _records(path: Path) -> list[tuple[str, dict]]:
    """(where, record): where is "line N" (.jsonl) or "record N" (a .json list, .parquet), for errors."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading .parquet needs pyarrow (pip install pyarrow), or convert it to JSONL") from None
        return [(f"record {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist(), 1)]
    text = _text(path)
    if path.suffix == ".jsonl":
        out = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: line {number}: not JSON ({e.msg}, column {e.colno})") from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e.msg}, line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of questions")
    return [(f"record {i}", r) for i, r in enumerate(data, 1)]


def _text(path: Path) -> str:
    if path.is_dir():
        raise UserError(f"{path} is a folder; expected the benchmark's annotation file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start})") from None


@contextmanager
def _at(path: Path, where: str, benchmark: str):
    """A record that does not hold what its benchmark needs: one error naming the file, the record and the field."""
    try:
        yield
    except UserError:
        raise
    except KeyError as e:
        raise UserError(f"{path}: {where}: not in the {benchmark} format: no field {e.args[0]!r} (see "
                        f"ppllava/evaluate/formats.py)") from None
    except (ValueError, IndexError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: {where}: not in the {benchmark} format ({type(e).__name__}: {e})") from None


def _index(value, count: int, path: Path, where: str, field: str) -> int:
    """An answer given as an option's number 0..count-1."""
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < count or isinstance(value, bool):
        raise UserError(f"{path}: {where}: {field!r} is {value!r}; expected an option number 0-{count - 1}")
    return index


def _side_file(path: Path) -> dict:
    """A JSON object beside the annotations (NExT-QA's video map, EgoSchema's answers): its own errors name it."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of id -> value, got a {type(data).__name__}")
    return data


def _video(root: Path, name: str) -> str:
    """root/name; a bare id that is not a folder of frames gets .mp4."""
    path = root / str(name)
    return str(path if path.suffix or path.is_dir() else path.with_name(f"{path.name}.mp4"))


def missing_videos(questions: list[Question]) -> list[str]:
    """The videos (files or frame folders) of `questions` that do not exist, in question order, each once."""
    return [v for v in dict.fromkeys(q.video for q in questions) if not os.path.exists(v)]


_OPTION_PREFIX = re.compile(r"^\(?([A-J])[.):]\s*")


def _listed(record: dict, field: str) -> list:
    """A record's list of options: a string there would read as one option per character."""
    value = record[field]
    if not isinstance(value, list):
        raise TypeError(f"{field!r} is {type(value).__name__} {str(value)[:40]!r}; expected a list of the options")
    return value


def _strip_letter(option: str) -> str:
    return _OPTION_PREFIX.sub("", option.strip(), count=1)


def read_mvbench(path: Path, root: Path) -> list[Question]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    out = []
    for file in files:
        task = file.stem
        sub = MVBENCH_FOLDERS.get(task)
        folder = root / sub if sub and (root / sub).is_dir() else root
        for i, (where, r) in enumerate(_records(file)):
            with _at(file, where, "mvbench"):
                options = tuple(str(c) for c in _listed(r, "candidates"))
                if "answer" in r and str(r["answer"]) not in options:
                    raise UserError(f"{file}: {where}: 'answer' {r['answer']!r} is none of its 'candidates' "
                                    f"({', '.join(map(repr, options))})")
                answer = options.index(str(r["answer"])) if "answer" in r else None
                window = (r.get("start"), r.get("end"))
                out.append(Question(f"{task}/{i}", _video(folder, r["video"]), r["question"], options, answer,
                                    r.get("task_type", task), window, FRAME_FOLDER_FPS.get(task)))
    return out


def read_videomme(path: Path, root: Path) -> list[Question]:
    out = []
    for where, r in _records(path):
        with _at(path, where, "videomme"):
            options = tuple(_strip_letter(o) for o in _listed(r, "options"))
            answer = None
            if r.get("answer"):
                letters = LETTERS[:len(options)]
                letter = str(r["answer"]).strip()[:1].upper()
                if not letter or letter not in letters:
                    raise UserError(f"{path}: {where}: 'answer' {r['answer']!r} is not one of its options' letters "
                                    f"({', '.join(letters)})")
                answer = letters.index(letter)
            video = r.get("videoID") or r["video_id"]
            out.append(Question(str(r["question_id"]), _video(root, video), r["question"], options, answer,
                                r.get("task_type", "all"), group=r.get("duration")))
    return out


def read_nextqa(path: Path, root: Path) -> list[Question]:
    rows = list(csv.DictReader(_text(path).splitlines()))
    maps = [p / "map_vid_vidorID.json" for p in (path.parent, root)]
    mapping = next((_side_file(m) for m in maps if m.is_file()), {})
    out = []
    for number, r in enumerate(rows, 2):                     # line 1 is the header
        where = f"line {number}"
        with _at(path, where, "nextqa"):
            options = tuple(r[f"a{k}"] for k in range(5))
            if any(o is None for o in options):
                raise UserError(f"{path}: {where}: fewer columns than the header's")
            video = mapping.get(str(r["video"]), r["video"])
            out.append(Question(f"{r['video']}_{r['qid']}", _video(root, video),
                                r["question"].strip().rstrip("?") + "?", options,
                                _index(r["answer"], len(options), path, where, "answer"), r.get("type", "all")))
    return out


def read_egoschema(path: Path, root: Path) -> list[Question]:
    answers_file = path.with_name("subset_answers.json")
    answers = _side_file(answers_file) if answers_file.is_file() else {}
    out = []
    for where, r in _records(path):
        with _at(path, where, "egoschema"):
            uid = str(r["q_uid"])                               # as subset_answers.json's keys (and every format's ids)
            options = tuple(r[f"option {k}"] for k in range(5))
            answer = r.get("answer", answers.get(uid))
            if answer is not None:
                answer = _index(answer, len(options), path, where, "answer")
            out.append(Question(uid, _video(root, uid), r["question"], options, answer, "all"))
    return out


READERS = {"mvbench": read_mvbench, "videomme": read_videomme, "nextqa": read_nextqa, "egoschema": read_egoschema}


def load_benchmark(name: str, path: str | Path, video_root: str | Path | None = None) -> list[Question]:
    if name not in READERS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(READERS)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark data {path} does not exist")
    root = Path(video_root) if video_root else path.parent
    try:
        questions = READERS[name](path, root)
    except UserError:
        raise
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise ValueError(f"{path}: not in the {name} format ({type(e).__name__}: {e})") from None
    if not questions:
        raise ValueError(f"{path}: no questions")
    seen = set()
    for q in questions:
        if q.id in seen:                              # rows (and eval --out's journal) are matched by id
            raise UserError(f"{path}: question id {q.id!r} is given twice; give each question its own id")
        seen.add(q.id)
        if not 2 <= len(q.options) <= len(LETTERS):
            raise ValueError(f"{path}: question {q.id} has {len(q.options)} options")
        if not isinstance(q.question, str) or not q.question.strip():
            raise UserError(f"{path}: question {q.id}: 'question' is {q.question!r}; expected its text")
    return questions

"""`ppllava eval`: a benchmark's questions answered by a pipeline, sharded over processes, scored on rank 0."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from tqdm import tqdm

from ..data import DataError
from .formats import LETTERS, Question
from .scoring import accuracy, extract_choice, mc_prompt, pooling_text

log = logging.getLogger(__name__)


def answer_all(pipeline, questions: list[Question], max_new_tokens: int = 16, progress: bool = True,
               batch_size: int = 1, on_rows=None) -> list[dict]:
    """One row per question: the raw answer, the parsed choice, whether it is right. A video that cannot be
    read, or a question that fails on the device (e.g. out of memory), is an error row counted as wrong,
    and the run goes on. Consecutive questions about one video share its decoded, encoded frames;
    `batch_size` consecutive questions go through the LLM together (the same answers as one at a time).
    `on_rows(rows)`: called with each batch's rows once they are answered (the journal)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    rows, cached = [], {}
    with tqdm(total=len(questions), desc="eval", unit="question", disable=not progress) as bar:
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            keys = [(q.video, q.window, q.fps) for q in chunk]
            cached = {k: v for k, v in cached.items() if k in keys}    # free the videos done with before reading
            ready, part = [], []
            for q, key in zip(chunk, keys):
                row = {"id": q.id, "category": q.category, "group": q.group, "video": q.video,
                       "answer": None if q.answer is None else LETTERS[q.answer]}
                part.append(row)
                try:
                    if key not in cached:
                        cached[key] = pipeline.read(q.video, window=q.window, fps=q.fps)
                    if isinstance(cached[key], BaseException):
                        raise cached[key]
                    ready.append((row, q, cached[key]))
                except (DataError, FileNotFoundError, RuntimeError) as e:
                    cached[key] = e
                    _error(row, e)
            for (row, q, _), out in zip(ready, _answers(pipeline, ready, max_new_tokens)):
                if isinstance(out, BaseException):
                    _error(row, out)
                else:
                    choice = extract_choice(out.text, q.options)
                    row.update(output=out.text, choice=None if choice is None else LETTERS[choice])
            for row in part:
                row["correct"] = None if row["answer"] is None else row["choice"] == row["answer"]
            rows += part
            if on_rows is not None:
                on_rows(part)
            bar.update(len(chunk))
    return rows


def _error(row: dict, e: BaseException) -> None:
    row.update(output=None, choice=None, error=f"{type(e).__name__}: {e}".splitlines()[0])


def _answers(pipeline, ready, max_new_tokens) -> list:
    """Answers of (row, question, visual) together; when the batch fails, each alone."""
    if len(ready) > 1:
        try:
            return pipeline.ask_batch([(visual, mc_prompt(q)) for _, q, visual in ready], max_new_tokens=max_new_tokens,
                                      pooling_texts=[pooling_text(q) for _, q, _ in ready])
        except (DataError, RuntimeError):
            pass
    answers = []
    for _, q, visual in ready:
        try:
            answers.append(pipeline.ask(visual, mc_prompt(q), max_new_tokens=max_new_tokens,
                                        pooling_text=pooling_text(q)))
        except (DataError, FileNotFoundError, RuntimeError) as e:
            answers.append(e)
    return answers


def shard(questions: list[Question], rank: int, world_size: int) -> list[Question]:
    """This process's questions: whole videos, dealt round-robin (so each video is read by one process)."""
    videos = list(dict.fromkeys(q.video for q in questions))
    mine = set(videos[rank::world_size])
    return [q for q in questions if q.video in mine]


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write `path` whole or not at all (a temporary file beside it, renamed), readable like any new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def evaluate(pipeline, questions: list[Question], group, benchmark: str, max_new_tokens: int = 16,
             batch_size: int = 1, journal=None) -> dict | None:
    """Each process answers the questions of its videos; the main one gathers, scores and returns the results.
    `journal` (evaluate/journal.py): rows answered by an earlier run are kept, new ones appended as they come."""
    todo = shard(questions, group.rank, group.world_size)
    done = journal.load() if journal is not None else {}
    kept = [done[q.id] for q in todo if q.id in done]
    if kept and group.is_main:
        log.warning("resuming: %d of this process's %d questions were answered in %s", len(kept), len(todo),
                    journal.out.parent)
    fresh = answer_all(pipeline, [q for q in todo if q.id not in done], max_new_tokens, progress=group.is_main,
                       batch_size=batch_size, on_rows=journal.append if journal is not None else None)
    mine = kept + fresh
    gathered = group.gather(mine)
    if not group.is_main:
        return None
    order = {q.id: i for i, q in enumerate(questions)}
    rows = sorted((r for part in gathered for r in part), key=lambda r: order[r["id"]])
    return {"benchmark": benchmark, **accuracy(rows), "errors": sum(1 for r in rows if "error" in r),
            "processes": group.world_size, "questions": rows}


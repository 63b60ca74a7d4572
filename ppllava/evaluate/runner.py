"""`ppllava eval`: a benchmark's questions answered by a pipeline, sharded over processes, scored on rank 0."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tqdm import tqdm

from ..data import DataError
from .formats import LETTERS, Question
from .scoring import accuracy, extract_choice, mc_prompt, pooling_text


def answer_all(pipeline, questions: list[Question], max_new_tokens: int = 16, progress: bool = True) -> list[dict]:
    """One row per question: the raw answer, the parsed choice, whether it is right (an unreadable video is
    an error row, counted as wrong, and the run goes on)."""
    rows = []
    for q in tqdm(questions, desc="eval", unit="question", disable=not progress):
        row = {"id": q.id, "category": q.category, "video": q.video,
               "answer": None if q.answer is None else LETTERS[q.answer]}
        try:
            out = pipeline.ask(pipeline.read(q.video), mc_prompt(q), max_new_tokens=max_new_tokens,
                               pooling_text=pooling_text(q))
            choice = extract_choice(out.text, q.options)
            row.update(output=out.text, choice=None if choice is None else LETTERS[choice])
        except (DataError, FileNotFoundError) as e:
            row.update(output=None, choice=None, error=str(e))
        row["correct"] = None if q.answer is None else row["choice"] == row["answer"]
        rows.append(row)
    return rows


def write_json_atomic(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        json.dump(data, f, indent=1)
        tmp = f.name
    os.replace(tmp, path)


def evaluate(pipeline, questions: list[Question], group, benchmark: str, max_new_tokens: int = 16) -> dict | None:
    """Each process answers questions[rank::world]; the main one gathers, scores and returns the results."""
    mine = answer_all(pipeline, questions[group.rank::group.world_size], max_new_tokens, progress=group.is_main)
    gathered = group.gather(mine)
    if not group.is_main:
        return None
    order = {q.id: i for i, q in enumerate(questions)}
    rows = sorted((r for part in gathered for r in part), key=lambda r: order[r["id"]])
    return {"benchmark": benchmark, **accuracy(rows), "errors": sum(1 for r in rows if "error" in r),
            "processes": group.world_size, "questions": rows}


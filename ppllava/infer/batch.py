"""Batch inference over a JSONL of questions, appending one JSON line per answer (a rerun continues
with the questions not yet answered, failed ones included)."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from ..data import DataError


def read_requests(path: str | Path) -> list[dict]:
    """Lines of {"video": path, "question": text} (optional "id"); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    requests = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise ValueError(f"{path}:{number}: expected an object with a non-empty \"question\"")
        if "video" in item and not isinstance(item["video"], str):
            raise ValueError(f"{path}:{number}: \"video\" must be a path")
        if not isinstance(item.get("id", number), (str, int)):
            raise ValueError(f"{path}:{number}: \"id\" must be a string or a number")
        requests.append({"id": item.get("id", number), **item})
    return requests


def answered(path: Path) -> set:
    """ids already answered in an output file (error rows are retried; a torn last line is ignored)."""
    done = set()
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                if "error" not in row:
                    done.add(row["id"])
            except (ValueError, KeyError, TypeError):
                continue
    return done


def run_batch(pipeline, requests: list[dict], out: str | Path, max_new_tokens: int, base: Path | None = None) -> dict:
    """Answer every request not yet in `out`; a failing video is recorded as an error and the batch goes on."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = answered(out)
    todo = [r for r in requests if r["id"] not in done]
    errors = 0
    with out.open("a", encoding="utf-8") as f:
        for request in tqdm(todo, desc="infer", unit="question"):
            row = {"id": request["id"], "video": request.get("video"), "question": request["question"]}
            try:
                video = request.get("video")
                if video is not None and base is not None and not Path(video).is_absolute():
                    video = str(base / video)
                visual = pipeline.read(video) if video else None
                answer = pipeline.ask(visual, request["question"], max_new_tokens=max_new_tokens)
                row.update(answer=answer.text, tokens=answer.tokens, visual_tokens=answer.visual_tokens,
                           seconds={**(visual.seconds if visual else {}), **answer.seconds})
            except (DataError, FileNotFoundError, ValueError, RuntimeError) as e:
                errors += 1
                row["error"] = str(e)
            f.write(json.dumps(row) + "\n")
            f.flush()
    return {"answered": len(todo) - errors, "errors": errors, "skipped": len(requests) - len(todo)}

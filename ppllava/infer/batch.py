"""Batch inference over a JSONL of questions, appending one JSON line per answer (a rerun continues
with the questions not yet answered, failed ones included).

The answers file is only ever appended whole lines; a line cut short by a crash mid-write (the last line, with no
newline) is dropped on the next run and its question answered again, so it is never glued to the next answer.
The settings the answers were given with are kept beside it, and a rerun with others is refused (check_settings).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tqdm import tqdm

from ..data import DataError
from ..errors import UserError

log = logging.getLogger(__name__)


def read_requests(path: str | Path) -> list[dict]:
    """Lines of {"video": path, "question": text} (optional "id", unique); errors name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--batch {path} is a folder; expected a JSONL file of questions")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    requests, seen = [], {}
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}:{number}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                            f"expected one JSON object a line") from None
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: not JSON ({e.msg}, column {e.colno}); expected one JSON object a line"
                            ) from None
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise UserError(f"{path}:{number}: expected an object with a non-empty \"question\"")
        if "video" in item and not isinstance(item["video"], str):
            raise UserError(f"{path}:{number}: \"video\" must be a path")
        key = item.get("id", number)
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise UserError(f"{path}:{number}: \"id\" must be a string or a number")
        if key in seen:                                    # a rerun would take one answer for both
            raise UserError(f"{path}: lines {seen[key]} and {number} have the same id {key!r}; give each question "
                            f"its own \"id\"")
        seen[key] = number
        requests.append({**item, "id": key})
    if not requests:                                       # a wrong file: nothing would run, and exit 0
        raise UserError(f"{path}: no questions; expected one JSON object a line")
    return requests


def repair(path: Path) -> None:
    """Drop a last line cut short by a crash mid-write (no newline at the end, not a whole row)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            whole = isinstance(json.loads(data[start:].decode("utf-8")), dict)
        except ValueError:
            whole = False
        if whole:                                          # written entirely but for its newline
            f.write(b"\n")
        else:
            log.warning("%s: line %d was cut short (%d bytes, a run stopped while writing it); dropped, its question "
                        "is answered again", path, data.count(b"\n") + 1, len(data) - start)
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())


def answered(path: Path) -> set:
    """ids already answered in an output file (error rows are retried); any line that is not a row is named."""
    done = set()
    if path.is_file():
        for number, raw in enumerate(path.read_bytes().splitlines(), 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
                key = row["id"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}:{number}: not an answer row (this file is written by infer --batch); delete "
                                f"that line to answer its question again, or give another --out") from None
            if "error" not in row:
                done.add(key)
    return done


def settings_change(recorded: dict, current: dict) -> str | None:
    """The first setting that differs, as "KEY RECORDED there, CURRENT now", or None."""
    for key in sorted(set(recorded) | set(current)):
        if recorded.get(key) != current.get(key):
            return f"{key} {recorded.get(key)!r} there, {current.get(key)!r} now"
    return None


def _settings_file(out: Path) -> Path:
    return out.with_name(f".{out.name}.settings.json")


def check_settings(out: str | Path, settings: dict) -> None:
    """Answers are added to `out` only under the settings its answers were given with (kept beside it in
    `.OUT.settings.json` by run_batch); an output without answers, or without that file, takes any."""
    out = Path(out)
    beside = _settings_file(out)
    if not (out.is_file() and out.stat().st_size and beside.is_file()):
        return
    try:
        recorded = json.loads(beside.read_text(encoding="utf-8"))
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict):
        raise UserError(f"{beside}: not the settings infer --batch writes; delete it to add to {out} anyway")
    change = settings_change(recorded, json.loads(json.dumps(settings)))
    if change:
        raise UserError(f"{out} holds answers given with other settings ({change}): give another --out, or rerun "
                        f"with those")


def resume(out: str | Path) -> set:
    """Repair a torn last line of `out` and return the ids answered there (before any model is loaded)."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(out))
    repair(out)
    return answered(out)


def run_batch(pipeline, requests: list[dict], out: str | Path, max_new_tokens: int, base: Path | None = None,
              done: set | None = None, batch_size: int = 1, settings: dict | None = None) -> dict:
    """Answer every request not yet in `out` (`done`: what `resume(out)` returned); a failing video or question
    is recorded as an error and the batch goes on. Consecutive questions about one video share its frames (read
    and encoded once). With `batch_size` > 1 the questions of each video are taken together (rows are written
    video by video) and `batch_size` questions go through the LLM at once, with the answers of one at a time.
    `settings` (what the answers depend on) are kept beside `out` for check_settings on the next run."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    out = Path(out)
    done = resume(out) if done is None else done
    out.parent.mkdir(parents=True, exist_ok=True)
    if settings is not None:
        _settings_file(out).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    todo = [r for r in requests if r["id"] not in done]

    def path_of(request):
        video = request.get("video")
        if video is not None and base is not None and not Path(video).is_absolute():
            video = str(base / video)
        return video or None

    if batch_size > 1:                            # each video's questions together (stable), in the file's order
        first = {v: i for i, v in reversed(list(enumerate(path_of(r) for r in todo)))}
        todo.sort(key=lambda r: first[path_of(r)])
    errors, visuals = 0, {}
    with out.open("a", encoding="utf-8") as f, tqdm(total=len(todo), desc="infer", unit="question") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            visuals = {k: v for k, v in visuals.items() if any(path_of(r) == k for r in chunk)}
            rows, ready = [], []
            for request in chunk:
                row = {"id": request["id"], "video": request.get("video"), "question": request["question"]}
                rows.append(row)
                video = path_of(request)
                try:
                    if video is not None and video not in visuals:
                        visuals[video] = pipeline.read(video)
                    ready.append((row, request, visuals.get(video)))
                except (DataError, FileNotFoundError, ValueError, RuntimeError) as e:
                    visuals[video] = e                                  # its other questions get the same error
                    row["error"] = str(e)
            for row, request, visual in [t for t in ready if isinstance(t[2], BaseException)]:
                row["error"] = str(visual)
            ready = [t for t in ready if not isinstance(t[2], BaseException)]
            for (row, _, visual), answer in zip(ready, _answers(pipeline, ready, max_new_tokens)):
                if isinstance(answer, BaseException):
                    row["error"] = str(answer)
                else:
                    row.update(answer=answer.text, tokens=answer.tokens, visual_tokens=answer.visual_tokens,
                               seconds={**(visual.seconds if visual else {}), **answer.seconds})
            for row in rows:
                errors += "error" in row
                f.write(json.dumps(row) + "\n")               # ASCII escapes: a lone surrogate is written as \udXXX
            f.flush()
            bar.update(len(chunk))
    return {"answered": len(todo) - errors, "errors": errors, "skipped": len(requests) - len(todo)}


def _answers(pipeline, ready, max_new_tokens) -> list:
    """Answers of (row, request, visual) together; when the batch fails, each alone (an error names its question)."""
    if len(ready) > 1:
        try:
            return pipeline.ask_batch([(visual, request["question"]) for _, request, visual in ready],
                                      max_new_tokens=max_new_tokens)
        except (DataError, ValueError, RuntimeError):
            pass
    answers = []
    for _, request, visual in ready:
        try:
            answers.append(pipeline.ask(visual, request["question"], max_new_tokens=max_new_tokens))
        except (DataError, FileNotFoundError, ValueError, RuntimeError) as e:
            answers.append(e)
    return answers

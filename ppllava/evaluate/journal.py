"""An eval run's answers kept as they come, so that a crash loses only the questions being answered.

With --out R.json every process appends its rows to `.R.json.answers-<rank>.jsonl` beside it, one whole line per
question, flushed after each batch; the first line holds the run's settings. Rerunning the same command reads every
process's journal (any number of processes), keeps the rows answered without an error and asks only the rest;
once R.json is written the journals are removed. A journal of other settings (another model or its files written
again, frame count, token limit, ...) is refused rather than mixed into the scores. A line cut short by the crash
is dropped and its question asked again; each process repairs only its own journal, and a line another process has
not finished is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..infer.batch import repair, settings_change

ROW = {"id", "category", "group", "video", "answer", "output", "choice", "correct"}    # runner.answer_all's rows


class Journal:
    def __init__(self, out: str | Path, rank: int, settings: dict):
        self.out, self.rank = Path(out), rank
        self.settings = json.loads(json.dumps(settings))      # as a journal line reads back
        self.path = self._path(rank)

    def _path(self, rank) -> Path:
        return self.out.with_name(f".{self.out.name}.answers-{rank}.jsonl")

    def journals(self) -> list[Path]:
        return sorted(self.out.parent.glob(f".{self.out.name}.answers-*.jsonl"))

    def load(self) -> dict:
        """Rows answered without an error in every journal, by question id; settings checked."""
        repair(self.path)
        done = {}
        for path in self.journals():
            for number, line in enumerate(_whole_lines(path), 1):
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if number == 1 and row is not None:
                    self._check(path, row)
                    continue
                if not (isinstance(row, dict) and ROW <= row.keys() and isinstance(row["id"], str)):
                    raise UserError(f"{path}:{number}: not a journal line (eval --out writes these); delete the "
                                    f"file to answer its questions again")
                if "error" not in row:
                    done[row["id"]] = row
        return done

    def _check(self, path: Path, header) -> None:
        settings = header.get("settings") if isinstance(header, dict) else None
        if not isinstance(settings, dict):
            raise UserError(f"{path}: no settings line; delete the file to answer its questions again")
        change = settings_change(settings, self.settings)
        if change:
            raise UserError(f"{path}: a partial run with other settings ({change}): rerun with those, or delete it to "
                            f"start again")

    def append(self, rows: list[dict]) -> None:
        """Rows of this process, whole lines, flushed (the settings line first in a new journal)."""
        new = not self.path.is_file() or self.path.stat().st_size == 0
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)     # --out's folder, made now rather than at the end
        with self.path.open("a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"settings": self.settings}) + "\n")
            f.writelines(json.dumps(row) + "\n" for row in rows)

    def remove(self) -> None:
        """Every process's journal (once the results are written)."""
        for path in self.journals():
            path.unlink(missing_ok=True)


def _whole_lines(path: Path) -> list[bytes]:
    """The lines of `path` ending in a newline (another process may be writing its last one)."""
    data = path.read_bytes()
    return [raw for raw in data[:data.rfind(b"\n") + 1].splitlines() if raw.strip()]

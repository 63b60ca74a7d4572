"""What a run reports: one JSON line per optimizer step in metrics.jsonl, and periodic log lines."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm


class Metrics:
    def __init__(self, path: Path, main: bool):
        self.path, self.main = path, main
        self.window = [0.0] * 4                 # loss sum, loss count, tokens, samples since the last line
        self.clock = time.perf_counter()

    def keep_until(self, step: int) -> None:
        """Drop the rows after `step` (those of a run that stopped after its last checkpoint)."""
        if not self.main or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError):      # a line torn by a kill
                continue
        self.path.write_text("".join(line + "\n" for line in kept))

    def record(self, row: dict, loss_sum: float, loss_n: float) -> None:
        self.window = [a + b for a, b in zip(self.window, (loss_sum, loss_n, row["tokens"], row["samples"]))]
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def log(self, step: int, total: int, epoch: int, lr: float) -> None:
        """One line for the window since the last one; starts a new window."""
        seconds = time.perf_counter() - self.clock
        loss_sum, loss_n, tokens, samples = self.window
        if self.main:
            tqdm.write(f"step {step}/{total} | epoch {epoch} | loss {loss_sum / max(loss_n, 1):.4f} | lr {lr:.3e} | "
                       f"{tokens / seconds:.0f} tokens/s | {samples / seconds:.2f} samples/s")
        self.restart()

    def restart(self) -> None:
        """Start a new throughput window (after a checkpoint, so saving is not counted as training time)."""
        self.window, self.clock = [0.0] * 4, time.perf_counter()

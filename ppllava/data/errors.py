"""The data layer's errors: one line each, naming the file and what is wrong with it."""

from __future__ import annotations


class DataError(ValueError):
    """Bad data configuration or annotation (a user error: the CLI exits 2)."""


class UnreadableSample(DataError):
    """A media file that cannot give the frames asked for: missing, corrupt, truncated or empty."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")

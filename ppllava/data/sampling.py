"""Which frames of a clip to read: N per clip, one from each of N equal segments (TSN-style).

The frame range [0, num_frames) is split into n segments with float boundaries i * num_frames / n.
Training takes a uniformly random position inside each segment, evaluation the segment centres:

    index_i = floor((i + u_i) * num_frames / n),   u_i ~ U[0, 1) (training) or 0.5 (evaluation)

so indices never decrease, and a clip shorter than n frames repeats its frames in order
(num_frames=3, n=6 -> 0 0 1 1 2 2). A sample's optional start/end times restrict the range first
(frame_window).
"""

from __future__ import annotations

import math

import torch

from .errors import DataError, UnreadableSample

_EPS = 1e-6     # seconds * fps that land within this of a frame boundary count as on it (0.1 * 30 = 3.0000000000000004)


def sample_indices(num_frames: int, n: int, train: bool, generator: torch.Generator | None = None) -> list[int]:
    """n non-decreasing frame indices in [0, num_frames): random in each segment (train) or its centre."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (frames to sample) must be an int >= 1, got {n!r}")
    if not train:        # exact integer centres: floor((2i + 1) * num_frames / 2n)
        return [min((2 * i + 1) * num_frames // (2 * n), num_frames - 1) for i in range(n)]
    u = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
    return [min(math.floor((i + u[i]) * num_frames / n), num_frames - 1) for i in range(n)]


def frame_window(num_frames: int, fps: float | None, start: float | None = None, end: float | None = None,
                 path=None) -> tuple[int, int]:
    """(first, stop): the frames [first, stop) that overlap the time window [start, end) in seconds.

    Frame k spans [k / fps, (k + 1) / fps). No start means the first frame, no end the last. Times
    without an fps (a frame folder opened without one), start >= end, or a window that holds no
    frame of the clip are errors: UnreadableSample naming `path` when given, else DataError.
    """
    def fail(reason: str):
        raise UnreadableSample(path, reason) if path is not None else DataError(reason)

    if start is None and end is None:
        return 0, num_frames
    if fps is None or fps <= 0:
        fail(f"start/end times {start}..{end} s given, but the clip has no frame rate "
             f"(for a folder of frames, set its dataset's fps in the data config)")
    if (start is not None and start < 0) or (end is not None and end < 0):
        fail(f"negative start/end time {start}..{end} s")
    if start is not None and end is not None and start >= end:
        fail(f"empty time window: start {start} s >= end {end} s")
    first = 0 if start is None else max(0, math.floor(start * fps + _EPS))
    stop = num_frames if end is None else min(num_frames, math.ceil(end * fps - _EPS))
    if first >= stop:
        fail(f"time window {start}..{end} s holds no frame of the clip ({num_frames} frames at {fps:g} fps, "
             f"{num_frames / fps:.3f} s)")
    return first, stop


def read_clip(clip, n: int, train: bool, generator: torch.Generator | None = None,
              window: tuple[int, int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """(uint8 (n, H, W, 3) frames, their indices): n frames sampled inside `window` (first, stop) of `clip`."""
    first, stop = (0, clip.num_frames) if window is None else window
    if not 0 <= first < stop <= clip.num_frames:
        raise ValueError(f"{clip.path}: window {window} is not inside the clip's {clip.num_frames} frames")
    indices = [first + i for i in sample_indices(stop - first, n, train, generator)]
    return clip.read(indices), indices

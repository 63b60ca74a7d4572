"""A synthetic video-QA test bed: moving coloured shapes with a known ground truth (see synthetic.py).

The names of `synthetic` are loaded on first use, so `python -m ppllava.testbed.synthetic` runs cleanly."""

import importlib
from pathlib import Path

# where `python -m ppllava.testbed.build` writes the checkpoint that ships (and `ppllava demo` reads)
CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "testbed"

__all__ = ["ANSWERS", "COLOURS", "DIRECTIONS", "KINDS", "PALETTE", "PHRASES", "SHAPES", "caption", "clip_rng",
           "corpus", "frame_caption_pairs", "load_scenes", "make_scene", "phrase", "questions", "render",
           "write_split", "write_testbed"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".synthetic", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

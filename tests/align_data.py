"""Generated image-caption pairs for the alignment tests: one flat coloured shape on a dark, noisy background.

Captions name the colour and the shape ("a red circle"), so image -> caption retrieval has a known answer
and a known chance level (1 / the number of distinct captions). Written as a .jsonl list of PNG files, or
as tar shards in webdataset's layout (KEY.png + KEY.txt).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (230, 30, 30), "green": (30, 220, 30), "blue": (40, 60, 240), "yellow": (235, 225, 30)}
SHAPES = ("square", "circle", "triangle")
CAPTIONS = [f"a {c} {s}" for c in COLOURS for s in SHAPES]


def _mask(shape: str, side: int) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side] + 0.5
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        return (x - side / 2) ** 2 + (y - side / 2) ** 2 <= (side / 2) ** 2
    return np.abs(x - side / 2) <= y / 2                 # a triangle pointing up


def make_pair(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, str]:
    colour, shape = list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
    image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    side = int(rng.integers(size // 3, size // 2 + 1))
    top, left = rng.integers(0, size - side + 1, 2)
    image[top:top + side, left:left + side][_mask(shape, side)] = COLOURS[colour]
    return image, f"a {colour} {shape}"


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def write_pairs(folder, n: int, seed: int, shards: int = 0) -> Path:
    """n pairs under `folder`: pairs.jsonl + images/, or (shards > 0) that many .tar shards. Returns the source."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = [make_pair(rng) for _ in range(n)]
    if shards:
        for s in range(shards):
            with tarfile.open(folder / f"shard-{s:05d}.tar", "w") as tar:
                for i in range(s, n, shards):
                    for name, data in ((f"{i:06d}.png", _png(pairs[i][0])), (f"{i:06d}.txt", pairs[i][1].encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        return folder
    (folder / "images").mkdir(exist_ok=True)
    with (folder / "pairs.jsonl").open("w") as f:
        for i, (image, caption) in enumerate(pairs):
            (folder / "images" / f"{i:06d}.png").write_bytes(_png(image))
            f.write(json.dumps({"image": f"images/{i:06d}.png", "caption": caption}) + "\n")
    return folder / "pairs.jsonl"

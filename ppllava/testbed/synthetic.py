"""Synthetic video QA: moving coloured shapes, short closed-vocabulary answers, a known ground truth.

A clip is T frames (default 16) of S x S pixels (default 48: the tiny checkpoint's input size, so the
CLIP preprocessing leaves the frames untouched) on a dark textured background. It holds 2-4
persistent shapes, present in every frame, and one *rare* shape present only in a short span of
frames (2-4 of 16: T//8 to T//4). Every shape has its own colour (colours are unique within a clip),
a size of 6-10 px, and moves in a straight line (left/right/up/down) at a constant 1, 1.5 or 2 px a
frame, never leaving the frame and never touching another shape (margin of one pixel). Shapes are
drawn flat in pure palette colours and frames are saved losslessly, so every answer can also be
recovered from the pixels (the tests do).

Clips are folders of PNG frames (root/media/<split>/clip_00000/frame_00.png ...): decord fails on
48 px wide H.264, and frame folders are read by every install (FrameFolderReader).

Question kinds (the record's "kind"; "rare" is true when the question is about the rare shape). Every
question names its shape by colour, as a user points at something they see; which frames hold it is
for the model to find, and that is what prompt-guided pooling is for:
    when       When is the red shape there?        always, or start / middle / end of the clip for the
                                                   rare shape (the third its span's middle falls in;
                                                   it is the rare shape half the time)
    present    Is there a red shape?               yes / no   (half yes, about the rare shape half of those)
Each clip gets `questions_per_clip` distinct questions, the kinds in turn in a random order, one
llava record each. (The shapes move, but no question asks which way: at 4-px patches the tiny vision
tower keeps too little of a patch's position for direction to be learnt in a few minutes.)

Files written by write_split / write_testbed under root:
    media/<split>/clip_NNNNN/frame_NN.png
    <split>.json         llava records + "kind", "rare", "answer", "clip", "id" (ignored by the parser)
    <split>_scenes.json  the scene description (ground truth) of each clip, in clip order
    <split>.yaml         data config of the split (format llava, frames = T)
    data.yaml            the training data config (= train.yaml)
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

PALETTE = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "cyan": (0, 255, 255), "magenta": (255, 0, 255), "white": (255, 255, 255),
}
COLOURS = tuple(PALETTE)
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
PHASES = ("start", "middle", "end")
KINDS = ("when", "present")
DESCRIBE = "Describe the video."
QUESTIONS = {"when": "When is the {colour} shape there?", "present": "Is there a {colour} shape?"}
ANSWERS = PHASES + ("always", "yes", "no")              # the closed answer vocabulary
STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = (1.0, 1.5, 2.0)
MIN_SIZE, MAX_SIZE = 8, 12
DEFAULT_FRAMES, DEFAULT_SIZE, DEFAULT_QUESTIONS = 16, 48, 3
SPLITS = ("train", "val", "test")


# -- scenes -----------------------------------------------------------------------------------------
def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFF_FFFF for k in keys]))


def split_key(split: str) -> int:
    return zlib.crc32(split.encode())


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of clip `index` of `split`: its scene, then its questions, are drawn from it."""
    return _rng(seed, split_key(split), index)


def position(shape: dict, t: int) -> tuple[int, int] | None:
    """Top-left (x, y) of `shape`'s box in frame t, or None when it is not in that frame."""
    first, last = shape["span"]
    if not first <= t <= last:
        return None
    dx, dy = STEP[shape["direction"]]
    moved = int(np.floor(shape["speed"] * (t - first) + 0.5))
    return shape["origin"][0] + dx * moved, shape["origin"][1] + dy * moved


def _place(rng, size: int, frames: int, span: tuple[int, int], taken: dict) -> dict:
    """A shape's motion (direction, speed, origin) that stays inside the frame over `span`."""
    side = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = [c for c in COLOURS if c not in taken["colours"]][int(rng.integers(len(COLOURS) - len(taken["colours"])))]
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    steps = span[1] - span[0]
    speeds = [s for s in SPEEDS if int(np.floor(s * steps + 0.5)) <= size - side] or [0.0]
    speed = float(speeds[int(rng.integers(len(speeds)))])
    travel = int(np.floor(speed * steps + 0.5))
    lo, hi = (travel, size - side) if direction in ("left", "up") else (0, size - side - travel)
    along = int(rng.integers(lo, hi + 1))
    across = int(rng.integers(0, size - side + 1))
    origin = [along, across] if direction in ("left", "right") else [across, along]
    return {"shape": kind, "colour": colour, "size": side, "direction": direction, "speed": speed,
            "origin": origin, "span": [int(span[0]), int(span[1])], "rare": False}


def _clear(a: dict, b: dict, frames: int, margin: int = 1) -> bool:
    """Whether the boxes of a and b stay `margin` px apart in every frame both are in."""
    for t in range(frames):
        pa, pb = position(a, t), position(b, t)
        if pa is None or pb is None:
            continue
        if (pa[0] < pb[0] + b["size"] + margin and pb[0] < pa[0] + a["size"] + margin
                and pa[1] < pb[1] + b["size"] + margin and pb[1] < pa[1] + a["size"] + margin):
            return False
    return True


def make_scene(rng: np.random.Generator, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE) -> dict:
    """A random scene description: the ground truth from which frames, questions and captions follow."""
    if frames < 2 or size < 2 * MAX_SIZE + 4:
        raise ValueError(f"need frames >= 2 and size >= {2 * MAX_SIZE + 4}, got {frames}, {size}")
    rare_len = int(rng.integers(max(1, frames // 8), max(1, frames // 4) + 1))
    for _ in range(100):
        count = int(rng.integers(2, 5))
        rare_first = int(rng.integers(0, frames - rare_len + 1))
        spans = [(0, frames - 1)] * count + [(rare_first, rare_first + rare_len - 1)]
        shapes, taken = [], {"colours": set()}
        for span in spans:
            for _ in range(100):
                shape = _place(rng, size, frames, span, taken)
                if all(_clear(shape, other, frames) for other in shapes):
                    break
            else:
                break
            shapes.append(shape)
            taken["colours"].add(shape["colour"])
        if len(shapes) == len(spans):
            shapes[-1]["rare"] = True
            return {"frames": frames, "size": size, "texture_seed": int(rng.integers(2 ** 31)), "shapes": shapes}
    raise RuntimeError("could not place the shapes without overlap")


def rare_shape(scene: dict) -> dict:
    return next(s for s in scene["shapes"] if s["rare"])


def rare_frames(scene: dict) -> list[int]:
    first, last = rare_shape(scene)["span"]
    return list(range(first, last + 1))


# -- rendering --------------------------------------------------------------------------------------
def _mask(kind: str, side: int) -> np.ndarray:
    """bool (side, side) footprint of a shape in its box."""
    c = (np.arange(side) + 0.5) - side / 2
    y, x = np.meshgrid(c, c, indexing="ij")
    if kind == "square":
        return np.ones((side, side), bool)
    if kind == "circle":
        return x ** 2 + y ** 2 <= (side / 2) ** 2
    if kind == "triangle":                             # apex up, base along the bottom row
        return np.abs(x) <= (np.arange(side)[:, None] + 1) / (2 * side) * side
    raise ValueError(f"unknown shape {kind!r}")


def _background(scene: dict) -> np.ndarray:
    """Dark texture (every channel < 64): blotches of a coarse grid plus fine noise, fixed per clip."""
    rng = np.random.default_rng(scene["texture_seed"])
    size = scene["size"]
    cells = max(2, size // 8)
    coarse = rng.integers(0, 32, (cells, cells, 3)).astype(np.uint8)
    blotch = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.int16)
    return np.clip(blotch + rng.integers(0, 16, (size, size, 3)), 0, 63).astype(np.uint8)


def render(scene: dict) -> np.ndarray:
    """uint8 (T, S, S, 3) RGB frames of `scene` (a pure function of the description)."""
    frames = scene["frames"]
    video = np.repeat(_background(scene)[None], frames, axis=0)
    for shape in scene["shapes"]:
        mask = _mask(shape["shape"], shape["size"])
        for t in range(frames):
            at = position(shape, t)
            if at is None:
                continue
            x, y = at
            box = video[t, y:y + shape["size"], x:x + shape["size"]]
            box[mask] = PALETTE[shape["colour"]]
    return video


# The tower alignment's captions: short phrases and the questions themselves, which are what the
# prompt tower reads when the model pools.
PHRASES = ("a {colour} {shape}", "the {colour} {shape}", "a {colour} shape", "the {colour} one", *QUESTIONS.values())


def phrase(shape: dict, rng) -> str:
    """A phrase or question naming one shape by colour, e.g. "the red one", "Is there a red shape?"."""
    return PHRASES[int(rng.integers(len(PHRASES)))].format(**shape)


def corpus() -> list[str]:
    """Every sentence the test bed writes: the tiny tokenizers are trained on it, so words are whole tokens."""
    out = [p.format(colour=c, shape=s) for p in PHRASES for c in COLOURS for s in SHAPES] + [DESCRIBE]
    return out + list(ANSWERS) + ["a red square, a blue circle and a green triangle", "nothing"]


def masks(scene: dict) -> np.ndarray:
    """bool (shapes, T, S, S): the pixels each shape covers in each frame (shapes never overlap)."""
    out = np.zeros((len(scene["shapes"]), scene["frames"], scene["size"], scene["size"]), bool)
    for k, shape in enumerate(scene["shapes"]):
        footprint = _mask(shape["shape"], shape["size"])
        for t in range(scene["frames"]):
            if (at := position(shape, t)) is not None:
                out[k, t, at[1]:at[1] + shape["size"], at[0]:at[0] + shape["size"]] = footprint
    return out


def description(scene: dict) -> str:
    """Every shape of the clip in palette order, e.g. "a red square, a green circle and a blue triangle".

    The answer to DESCRIBE, the captioning record each clip also gets: every word of it depends on
    the video, which teaches the LLM to read its visual tokens (as LLaVA's caption pretraining does)."""
    return _listing(sorted(scene["shapes"], key=lambda s: COLOURS.index(s["colour"])))


def caption(scene: dict, frame_index: int) -> str:
    """What is visible in one frame, e.g. "a red square and a blue circle" (shapes in scene order)."""
    return _listing([s for s in scene["shapes"] if position(s, frame_index) is not None])


def _listing(shapes: list[dict]) -> str:
    """ "a red square, a blue circle and a green triangle" ("nothing" for no shapes)."""
    names = [f"a {s['colour']} {s['shape']}" for s in shapes]
    if not names:
        return "nothing"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def absent_colours(scene: dict) -> list[str]:
    """The palette's colours that no shape of the clip has."""
    return [c for c in COLOURS if all(s["colour"] != c for s in scene["shapes"])]


# -- questions --------------------------------------------------------------------------------------
def _target(scene: dict, rng) -> dict:
    """The shape a question is about: the rare one half of the time, else a persistent one."""
    persistent = [s for s in scene["shapes"] if not s["rare"]]
    return rare_shape(scene) if rng.random() < 0.5 else persistent[int(rng.integers(len(persistent)))]


def when(shape: dict, frames: int) -> str:
    """"always" for a persistent shape; else the third of the clip the middle of its span falls in."""
    first, last = shape["span"]
    if first == 0 and last == frames - 1:
        return "always"
    return PHASES[min(2, int(3 * (first + last + 1) / 2 / frames))]


def _question(kind: str, scene: dict, rng) -> tuple[str, str, bool]:
    """(question, answer, rare) of `kind` about `scene`; every question names its shape by colour."""
    if kind == "when":
        target = _target(scene, rng)
        return QUESTIONS[kind].format(**target), when(target, scene["frames"]), target["rare"]
    if kind == "present":
        absent = absent_colours(scene)
        if rng.random() < 0.5:
            target = _target(scene, rng)
            return QUESTIONS[kind].format(**target), "yes", target["rare"]
        return QUESTIONS[kind].format(colour=absent[int(rng.integers(len(absent)))]), "no", False
    raise ValueError(f"unknown question kind {kind!r}")


def questions(scene: dict, rng, n: int = DEFAULT_QUESTIONS) -> list[dict]:
    """`n` distinct questions about `scene`: the kinds in turn, in a random order."""
    out, seen = [], set()
    order = [str(k) for k in rng.permutation(KINDS)]
    for attempt in range(20 * n):
        kind = order[attempt % len(order)]
        question, answer, rare = _question(kind, scene, rng)
        if question in seen:
            continue
        seen.add(question)
        out.append({"kind": kind, "question": question, "answer": answer, "rare": bool(rare)})
        if len(out) == n:
            break
    return out


# -- files ------------------------------------------------------------------------------------------
def clip_dir(split: str, index: int) -> str:
    """A clip's folder relative to root/media."""
    return f"{split}/clip_{index:05d}"


def write_clip(folder: Path, video: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    width = len(str(len(video) - 1))
    for t, frame in enumerate(video):
        Image.fromarray(frame).save(folder / f"frame_{t:0{width}d}.png")


def data_config(split: str, frames: int) -> dict:
    return {"datasets": [{"name": f"synthetic_{split}", "format": "llava", "annotation": f"{split}.json",
                          "root": "media", "frames": frames, "reader": "auto"}]}


def write_split(root, split: str, n_clips: int, seed: int, frames: int = DEFAULT_FRAMES,
                size: int = DEFAULT_SIZE, questions_per_clip: int = DEFAULT_QUESTIONS) -> list[dict]:
    """Write `n_clips` clips of `split` and its annotation, scenes and data config; returns the records.

    Each clip gets `questions_per_clip` questions and a DESCRIBE record (not a question: scoring leaves
    it out).

    Clip i is drawn from (seed, split, i): the same seed gives the same bytes, other splits other clips."""
    root = Path(root)
    records, scenes = [], []
    for i in range(n_clips):
        rng = clip_rng(seed, split, i)
        scene = make_scene(rng, frames, size)
        write_clip(root / "media" / clip_dir(split, i), render(scene))
        scenes.append(scene)
        asked = questions(scene, rng, questions_per_clip)
        asked.append({"kind": "describe", "question": DESCRIBE, "answer": description(scene), "rare": False})
        for q, qa in enumerate(asked):
            records.append({
                "id": f"{split}_{i:05d}_" + ("d" if qa["kind"] == "describe" else str(q)), "video": clip_dir(split, i),
                "conversations": [{"from": "human", "value": "<video>\n" + qa["question"]},
                                  {"from": "gpt", "value": qa["answer"]}],
                "kind": qa["kind"], "rare": qa["rare"], "answer": qa["answer"], "clip": i})
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}.json").write_text(json.dumps(records, indent=1) + "\n")
    (root / f"{split}_scenes.json").write_text(json.dumps(scenes) + "\n")
    (root / f"{split}.yaml").write_text(yaml.safe_dump(data_config(split, frames), sort_keys=False))
    return records


def write_testbed(root, seed: int = 0, train: int = 200, val: int = 40, test: int = 40,
                  frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE,
                  questions_per_clip: int = DEFAULT_QUESTIONS) -> dict[str, list[dict]]:
    """All three splits, their configs and root/data.yaml (the training config); returns the records."""
    root = Path(root)
    out = {split: write_split(root, split, n, seed, frames, size, questions_per_clip)
           for split, n in zip(SPLITS, (train, val, test))}
    (root / "data.yaml").write_text(yaml.safe_dump(data_config("train", frames), sort_keys=False))
    return out


def load_scenes(root, split: str) -> list[dict]:
    return json.loads((Path(root) / f"{split}_scenes.json").read_text())


def frame_caption_pairs(root, split: str):
    """(frame path, caption) for every frame of every clip of a written split."""
    root = Path(root)
    for i, scene in enumerate(load_scenes(root, split)):
        folder = root / "media" / clip_dir(split, i)
        width = len(str(scene["frames"] - 1))
        for t in range(scene["frames"]):
            yield folder / f"frame_{t:0{width}d}.png", caption(scene, t)


def summary(records: list[dict]) -> str:
    kinds = Counter(r["kind"] for r in records)
    asked = [r for r in records if r["kind"] in KINDS]
    return (f"{len(asked)} questions and {kinds['describe']} descriptions of {len({r['clip'] for r in records})} "
            f"clips, {sum(r['rare'] for r in asked)} about the rare shape; " + ", ".join(f"{k} {kinds[k]}" for k in KINDS))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ppllava.testbed.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the test bed to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=200, help="clips in the train split")
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--questions-per-clip", type=int, default=DEFAULT_QUESTIONS)
    args = parser.parse_args(argv)
    written = write_testbed(args.out, args.seed, args.train, args.val, args.test, args.frames, args.size,
                            args.questions_per_clip)
    out = Path(args.out)
    for split, records in written.items():
        print(f"{split}: {summary(records)} -> {out / (split + '.json')}, {out / 'media' / split}/, "
              f"{out / (split + '.yaml')}")
    print(f"training config: {out / 'data.yaml'}")


if __name__ == "__main__":
    main()

"""The synthetic video-QA test bed: deterministic, answers that the pixels confirm, readable by the data path."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ppllava.data.chat import IGNORE, ChatEncoder
from ppllava.data.dataset import ConversationDataset, Item
from ppllava.data.sources import load_data_config, load_samples
from ppllava.model import load_config
from ppllava.model.tiny import llm_tokenizer
from ppllava.testbed import synthetic as syn

T, S = 16, 48
COUNTS = {"train": 8, "val": 4, "test": 4}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("testbed")
    syn.write_testbed(root, seed=7, **COUNTS)
    return root


def frames_of(root, split, clip):
    folder = root / "media" / syn.clip_dir(split, clip)
    files = sorted(folder.iterdir())
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


# -- an independent reading of the pixels -----------------------------------------------------------
def objects(video, tolerance=40):
    """colour -> {"frames", "shape", "direction"} read from the pixels alone (colours are unique per clip)."""
    found = {}
    for name, rgb in syn.PALETTE.items():
        masks = (np.abs(video.astype(int) - np.array(rgb)) <= tolerance).all(-1)       # (T, H, W)
        present = [t for t in range(len(video)) if masks[t].any()]
        if not present:
            continue
        t = max(present, key=lambda t: masks[t].sum())
        ys, xs = np.nonzero(masks[t])
        fill = masks[t].sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        shape = "square" if fill > 0.97 else "circle" if fill > 0.72 else "triangle"
        (y0, x0), (y1, x1) = (np.argwhere(masks[i]).mean(0) for i in (present[0], present[-1]))
        dx, dy = x1 - x0, y1 - y0
        direction = (("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up"))
        found[name] = {"frames": present, "shape": shape, "direction": direction}
    return found


def pixel_answer(question, seen, frames):
    """(answer, rare) of a record's question, from the objects read off the pixels."""
    brief = [c for c, o in seen.items() if len(o["frames"]) < frames]
    if m := re.fullmatch(r"When is the (\w+) shape there\?", question):
        shown = seen[m[1]]["frames"]
        if len(shown) == frames:
            return "always", False
        middle = (shown[0] + shown[-1] + 1) / 2                        # frames [a, b] span a .. b + 1
        return ("start", "middle", "end")[min(2, int(middle // (frames / 3)))], True
    if m := re.fullmatch(r"Is there a (\w+) shape\?", question):
        return ("yes" if m[1] in seen else "no"), m[1] in brief
    if question == syn.DESCRIBE:
        names = [f"a {c} {seen[c]['shape']}" for c in syn.PALETTE if c in seen]
        return ", ".join(names[:-1]) + " and " + names[-1], False
    raise AssertionError(f"unknown question {question!r}")


# -- tests ------------------------------------------------------------------------------------------
def test_same_seed_same_bytes_other_splits_other_clips(root, tmp_path):
    syn.write_split(tmp_path, "val", COUNTS["val"], seed=7)
    assert (tmp_path / "val.json").read_bytes() == (root / "val.json").read_bytes()
    for clip in range(COUNTS["val"]):
        assert np.array_equal(frames_of(tmp_path, "val", clip), frames_of(root, "val", clip))
    clips = {split: [frames_of(root, split, c) for c in range(n)] for split, n in COUNTS.items()}
    flat = [c.tobytes() for split in clips for c in clips[split]]
    assert len(set(flat)) == len(flat)                                  # no clip repeats within or across splits
    other = syn.write_split(tmp_path / "other", "val", COUNTS["val"], seed=8)
    assert other != json.loads((root / "val.json").read_text())


def test_answers_agree_with_the_pixels(root):
    kinds = set()
    for split, n in COUNTS.items():
        records = json.loads((root / f"{split}.json").read_text())
        scenes = syn.load_scenes(root, split)
        assert len(scenes) == n and {r["clip"] for r in records} == set(range(n))
        for clip in range(n):
            video = frames_of(root, split, clip)
            assert video.shape == (T, S, S, 3)
            seen = objects(video)
            assert len(seen) == len(scenes[clip]["shapes"])                 # nothing hidden or clipped away
            brief = [c for c, o in seen.items() if len(o["frames"]) < T]
            assert len(brief) == 1                                          # one rare shape, the rest always there
            rare = syn.rare_shape(scenes[clip])
            assert brief == [rare["colour"]] and seen[brief[0]]["frames"] == syn.rare_frames(scenes[clip])
            assert 2 <= len(syn.rare_frames(scenes[clip])) <= 4
            for shape in scenes[clip]["shapes"]:                         # persistent shapes move as described
                assert shape["rare"] or seen[shape["colour"]]["direction"] == shape["direction"]
            for record in (r for r in records if r["clip"] == clip):
                question = record["conversations"][0]["value"].removeprefix("<video>\n")
                assert record["conversations"][1]["value"] == record["answer"]
                assert record["answer"] in syn.ANSWERS or record["kind"] == "describe"
                assert pixel_answer(question, seen, T) == (record["answer"], record["rare"]), record
                kinds.add(record["kind"])
    assert kinds == {*syn.KINDS, "describe"}


def test_captions_name_what_each_frame_shows(root):
    pairs = list(syn.frame_caption_pairs(root, "test"))
    assert len(pairs) == COUNTS["test"] * T
    for path, text in pairs[:2 * T]:
        frame = np.asarray(Image.open(path).convert("RGB"))[None]
        named = {(c, s) for c, s in re.findall(r"a (\w+) (\w+)", text)}
        assert named == {(c, o["shape"]) for c, o in objects(frame).items()}


@pytest.mark.parametrize("config_name,train", [("test.yaml", False), ("data.yaml", True)])
def test_the_data_path_reads_a_split(root, config_name, train):
    config = load_config("tiny")
    config.image_token_id, config.video_token_id = 300, 301           # the tiny LLM tokenizer's <image>, <video>
    tokenizer = llm_tokenizer()
    data = load_data_config(root / config_name)
    samples = load_samples(data)
    split = "train" if train else "test"
    records = json.loads((root / f"{split}.json").read_text())
    assert len(samples) == len(records)
    ds = ConversationDataset(samples, data, config, ChatEncoder.for_config(tokenizer, config), train=train)
    preprocess = ds.preprocess
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1) * 255
    for index in range(0, len(ds), 5):
        item, record = ds[index], records[index]
        assert isinstance(item, Item) and item.frames == (T,) and item.is_video == (True,)
        assert item.pixel_values.shape == (T, 3, S, S)
        assert item.prompt == record["conversations"][0]["value"].removeprefix("<video>\n")
        assert tokenizer.decode(item.labels[item.labels != IGNORE]) == record["answer"] + "<|im_end|>\n"
        assert (item.input_ids == 301).sum() == config.visual_tokens(T, True)
        pixels = (item.pixel_values * std + mean).permute(0, 2, 3, 1)   # the 48 px frames pass unchanged
        clip = frames_of(root, split, record["clip"])
        assert (pixels - torch.from_numpy(clip).float()).abs().max() < 0.5
        rare = syn.rare_shape(syn.load_scenes(root, split)[record["clip"]])
        shown = objects(pixels.round().clamp(0, 255).to(torch.uint8).numpy())[rare["colour"]]["frames"]
        assert shown == syn.rare_frames(syn.load_scenes(root, split)[record["clip"]]) and len(shown) <= T // 4


def test_cli_writes_and_reports(tmp_path, capsys):
    syn.main(["--out", str(tmp_path), "--seed", "1", "--train", "2", "--val", "1", "--test", "1",
              "--questions-per-clip", "5"])
    out = capsys.readouterr().out
    assert "train: 10 questions and 2 descriptions of 2 clips" in out and "data.yaml" in out
    for name in ("train.json", "val.json", "test.json", "data.yaml", "train.yaml", "val.yaml", "test.yaml"):
        assert (tmp_path / name).is_file()
    records = json.loads((tmp_path / "train.json").read_text())
    for clip in range(2):
        asked = [r for r in records if r["clip"] == clip and r["kind"] != "describe"]
        assert len(asked) == 5 and len({r["conversations"][0]["value"] for r in asked}) == 5
        assert {r["kind"] for r in asked} == set(syn.KINDS)             # the kinds in turn

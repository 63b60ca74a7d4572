"""ppllava explain: the relevance picture of a tiny checkpoint on a generated clip, and render() on
synthetic relevance maps whose hot spots are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ppllava.cli import main
from ppllava.infer.explain import BACKGROUND, PAD, explain, layout, render, shares
from ppllava.model.tiny import save_tiny_checkpoint
from oracles import relevance_loop
from videos import pattern, write_video


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    write_video(root / "clip.mp4", 12, size=(48, 64), noise=False)
    return {"root": root, "video": root / "clip.mp4", "model": save_tiny_checkpoint(root / "model")}


@pytest.fixture(scope="module")
def pipe(bed):
    from ppllava.infer import Pipeline

    return Pipeline.load(bed["model"], device="cpu", frames=4)


def one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def grid_of(image):
    """(rows, columns, tile heights, tile widths) as drawn: tiles are the runs of non-background pixels at least
    100 px long both ways (text and the outline of the peak frame are thinner)."""
    mask = (np.asarray(image.convert("RGB")) != BACKGROUND).any(axis=2)
    bands = [run for run in runs([max((n for _, n in runs(row)), default=0) >= 100 for row in mask]) if run[1] >= 100]
    middle = bands[0][0] + bands[0][1] // 2
    tiles = [run for run in runs(mask[middle]) if run[1] >= 100]
    return len(bands), len(tiles), {n for _, n in bands}, {n for _, n in tiles}


def runs(flags):
    """(start, length) of each run of true values."""
    out, start = [], None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i - start))
            start = None
    return out


def same_frames(count, size=(48, 48)):
    return torch.stack([pattern(5, size)] * count)


def tile(image, box):
    """The (h, w, 3) float pixels of `image` inside `box`."""
    return torch.from_numpy(np.asarray(image.crop(box), dtype=np.float32))


# -- the command -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames,columns,rows", [(4, None, 2), (4, 4, 1), (8, 3, 3)])
def test_cli_writes_a_png_grid_of_the_frames(bed, tmp_path, capsys, frames, columns, rows):
    out = tmp_path / "sub" / "relevance.png"
    argv = ["explain", "--model", str(bed["model"]), "--video", str(bed["video"]), "--prompt", "what happens",
            "--out", str(out), "--frames", str(frames), "--device", "cpu", "--json"]
    assert main(argv + (["--columns", str(columns)] if columns else [])) == 0
    summary = json.loads(capsys.readouterr().out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        size, grid = image.size, grid_of(image)
    assert summary["path"] == str(out) and summary["size"] == list(size)
    assert len(summary["frames"]) == frames and summary["columns"] == (columns or 2)
    # the 48x64 frames are drawn 192x256: the width is C tiles and C+1 gaps
    assert size[0] == summary["columns"] * (256 + PAD) + PAD
    assert grid == (rows, summary["columns"], {192}, {256})
    assert [p.name for p in out.parent.iterdir()] == ["relevance.png"]              # no temporary file left
    assert summary["peak_frame"] == summary["frames"][max(range(frames), key=summary["shares"].__getitem__)]


def test_grid_shape_follows_the_columns(bed, tmp_path, capsys):
    sizes = {}
    for columns, rows in ((1, 4), (2, 2), (3, 2), (4, 1)):
        out = tmp_path / f"c{columns}.png"
        assert main(["explain", "--model", str(bed["model"]), "--video", str(bed["video"]), "--prompt", "who",
                     "--out", str(out), "--frames", "4", "--columns", str(columns), "--device", "cpu"]) == 0
        assert str(out) in capsys.readouterr().out
        with Image.open(out) as image:
            sizes[columns] = image.size
            assert grid_of(image) == (rows, columns, {192}, {256})
    assert sizes[3][0] - sizes[2][0] == sizes[4][0] - sizes[3][0] == 256 + PAD      # one tile more per column


def test_shares_are_the_relevance_per_frame_and_sum_to_one(pipe, bed, tmp_path):
    """The shares against a second computation from the model's own towers: the question alone through the
    CLIP text tower, each patch through CLIP's post-LayerNorm and visual projection, then the slow loop of
    tests/oracles.py (normalise, cosine, one softmax over all 8 x 24 x 24 positions), summed per frame."""
    question = "what happens in the video"
    summary = explain(pipe, bed["video"], question, tmp_path / "r.png", frames=8)
    visual = pipe.read(bed["video"], 8)
    towers = pipe.model.prompt_pooling
    ids = pipe.prompt_tokenizer(question, return_tensors="pt")["input_ids"]
    assert ids[0, 0] == 0 and ids[0, -1] == 1                                     # <|startoftext|> ... <|endoftext|>
    with torch.no_grad():
        text = towers.prompt_tower(input_ids=ids).text_embeds                     # (1, 16)
        projection = towers.patch_projection
        patches = projection.visual_projection(projection.post_layernorm(visual.patches))   # (8, 24, 24, 16)
    relevance = relevance_loop(patches[None], text, pipe.config.relevance_scale)[0]
    expected = relevance.sum(dim=(1, 2)).tolist()
    assert pipe.config.relevance_scale == 100.0 and max(expected) > 0.3 > 0.01 > min(expected)   # far from uniform
    assert summary["frames"] == visual.indices == [0, 2, 3, 5, 6, 8, 9, 11]       # centres of 8 segments of 12
    assert summary["shares"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert sum(summary["shares"]) == pytest.approx(1.0, abs=1e-5)
    assert summary["peak_frame"] == visual.indices[max(range(8), key=expected.__getitem__)]
    assert summary["peak_share"] == pytest.approx(max(expected), rel=1e-4)


# -- render --------------------------------------------------------------------------------------------------
def test_the_frame_holding_the_relevance_is_hotter():
    frames, g = same_frames(4), 6
    relevance = torch.zeros(4, g, g)
    relevance[2, 3, 3] = 1.0                                                         # all the mass on one patch
    image = render(frames, relevance, [0, 3, 6, 9], "where")
    plan = layout(4, (48, 48), None, "where", _fonts())
    assert image.size == plan.size and plan.columns == 2 and plan.rows == 2
    hot, cold = [tile(image, box) for box in (plan.boxes[2], plan.boxes[0])]
    h, w = hot.shape[:2]
    spot = (slice(h // 2, h // 2 + h // g), slice(w // 2, w // 2 + w // g))          # patch (3, 3) of the tile
    assert (hot[spot].mean(dim=(0, 1)) - cold[spot].mean(dim=(0, 1))).sum() > 150       # pale yellow vs dark
    assert hot[spot][..., 0].mean() > cold[spot][..., 0].mean() + 60                 # red: hot, over black blocks
    far = (slice(0, h // g), slice(0, w // g))                                       # a patch far from the spot
    assert (hot[far] - cold[far]).abs().max() <= 2
    assert torch.equal(tile(image, plan.boxes[1]), cold)                             # zero relevance: the same
    assert shares(relevance) == [0.0, 0.0, 1.0, 0.0]


def test_one_scale_for_the_whole_video():
    """A frame with half the peak of another is drawn cooler, not normalised to its own maximum."""
    frames = same_frames(2)
    relevance = torch.full((2, 4, 4), 1.0)
    relevance[1] *= 0.25
    relevance /= relevance.sum()
    image = render(frames, relevance, [0, 1], "scale", columns=2)
    plan = layout(2, (48, 48), 2, "scale", _fonts())
    strong, weak = (tile(image, box) for box in plan.boxes)
    assert strong.mean() > weak.mean() + 20


def test_crop_dims_what_the_tower_does_not_see():
    """A CLIP tower sees the centre square of a 48x64 frame: the side strips carry no heat and are dimmed."""
    frames = torch.full((1, 48, 64, 3), 200, dtype=torch.uint8)
    relevance = torch.full((1, 4, 4), 1 / 16)
    image = render(frames, relevance, [0], "crop", crop=True)
    box = layout(1, (48, 64), None, "crop", _fonts()).boxes[0]
    pixels = tile(image, box)
    h, w = pixels.shape[:2]
    left, centre = pixels[:, : (w - h) // 2 - 2], pixels[:, (w - h) // 2 + 2: (w + h) // 2 - 2]
    assert left.mean() < 60 < 200 < centre[..., 0].mean()


@pytest.mark.parametrize("relevance,indices", [(torch.zeros(3, 4, 4), [0, 1, 2]), (torch.zeros(2, 4, 4), [0]),
                                               (torch.zeros(2, 16), [0, 1])])
def test_render_rejects_mismatched_inputs(relevance, indices):
    with pytest.raises(ValueError, match="one"):
        render(same_frames(2), relevance, indices, "x")


# -- errors ----------------------------------------------------------------------------------------------------
def test_missing_video_exits_2_with_one_line(bed, tmp_path, capsys):
    one_line_error(capsys, ["explain", "--model", str(bed["model"]), "--video", str(tmp_path / "nope.mp4"),
                            "--prompt", "what", "--out", str(tmp_path / "r.png")], "does not exist")
    assert not (tmp_path / "r.png").exists()


def test_a_folder_that_is_not_a_checkpoint_exits_2(bed, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    one_line_error(capsys, ["explain", "--model", str(tmp_path), "--video", str(bed["video"]), "--prompt", "what",
                            "--out", str(tmp_path / "r.png"), "--frames", "4"], "not ppllava")


@pytest.mark.parametrize("name,needle", [("folder", "is a folder"), ("r.jpg", "ending in .png")])
def test_out_must_be_a_png_file_path(bed, tmp_path, capsys, name, needle):
    (tmp_path / "folder").mkdir()
    one_line_error(capsys, ["explain", "--model", str(bed["model"]), "--video", str(bed["video"]), "--prompt", "what",
                            "--out", str(tmp_path / name), "--frames", "4"], needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def _fonts():
    from ppllava.infer.explain import _font

    return _font(15), _font(13)

"""A visual token budget for videos (config video_max_tokens / video_pooled_size, CLI --max-visual-tokens /
--pooled-size): 8 to 256 frames pool to the budget with kernels derived per video as the authors' get_size
output_size mode does (tests/oracles.py), the pooled values match the loop oracle, the config's counts are what the
model produces, a training batch of videos of different lengths runs forward and backward, and inference takes any
--frames the budget allows. Without a budget nothing changes."""

import json
from pathlib import Path

import pytest
import torch
from oracles import get_size_output_mode, pool_loop

import backends
from ppllava.cli import build_parser, main
from ppllava.infer.pipeline import DEFAULT_FRAMES, Pipeline, check_frame_budget, default_frames
from ppllava.model import build_model, load_config, load_model
from ppllava.model.checkpoint import load_tokenizers
from ppllava.model.synthetic import make_batch, visual_kwargs
from ppllava.model.tiny import save_tiny_checkpoint
from ppllava.train.config import load_train_config
from ppllava.train.stream import MicroBatches, Position
from ppllava.train.trainer import build_data, model_config_with
from train_data import write_training_data
from videos import write_image, write_text, write_video

FRAMES = (8, 32, 100, 256)
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny.yaml"


def small(**budget):
    """The tiny architecture with 12x12 frames of 2x2 patches: a 6x6 grid, 2x2 tokens per pooled frame (the loop
    oracle stays fast at 256 frames)."""
    config = load_config("tiny")
    config.vision_config.image_size = 12
    for key, value in budget.items():
        setattr(config, key, value)
    config.check()
    return config


# (budget, pooled size (T', H', W') every one of FRAMES gets): worked out by hand from the 6x6 grid and (2, 3, 3)
BUDGETS = [
    ({"video_max_tokens": 16}, (4, 2, 2)),        # 8 frames fit with the fixed kernels (4 x 2 x 2); longer: T' = 4
    ({"video_pooled_size": [4, 2, 2]}, (4, 2, 2)),
    ({"video_max_tokens": 3}, (3, 1, 1)),         # one pooled frame (2 x 2) is over 3: a 1 x 1 square, T' = 3
]


@pytest.mark.parametrize("budget,pooled", BUDGETS, ids=lambda v: json.dumps(v) if isinstance(v, dict) else None)
def test_every_length_pools_to_the_budget_with_the_authors_kernels_and_matches_the_loop(budget, pooled, pool_impl):
    config = small(**budget)
    gen = torch.Generator().manual_seed(3)
    for frames in FRAMES:
        size = (frames, 6, 6)
        _, kernel, stride = get_size_output_mode(size, pooled)
        assert config.pooling_geometry(True, frames) == (list(kernel), list(stride)), frames
        assert config.visual_tokens(frames, True) == pooled[0] * pooled[1] * pooled[2]
        x = torch.randn(1, *size, 3, generator=gen)
        relevance = torch.randn(1, *size, generator=gen) * 0.02       # a spread of window weights at 0.01
        got = backends.prompt_guided_pool(x, relevance, kernel=kernel, stride=stride, temperature=0.01)
        assert tuple(got.shape[1:4]) == pooled
        torch.testing.assert_close(got.double(), pool_loop(x, relevance, kernel, stride, 0.01), atol=1e-5, rtol=1e-5)


def test_without_a_budget_or_within_it_the_fixed_kernels_stay():
    config = load_config("tiny")
    assert config.video_max_tokens is None and config.video_pooled_size is None
    for frames in (2, 33, 256):
        assert config.pooling_geometry(True, frames) == ([2, 3, 3], [2, 3, 3])
    assert config.visual_tokens(256, True) == 128 * 64
    config.video_max_tokens = 1024
    assert config.pooling_geometry(True, 33) == ([2, 3, 3], [2, 3, 3])           # 16 x 8 x 8 fits: unchanged
    assert config.visual_tokens(8, True) == 4 * 64 and config.visual_tokens(33, True) == 1024
    assert config.pooling_geometry(True, 256) == ([16, 3, 3], [16, 3, 3])
    assert config.pooling_geometry(False, 1) == ([1, 3, 3], [1, 3, 3])           # images keep theirs
    config.video_max_tokens, config.video_pooled_size = None, [4, 8, 8]
    assert config.pooling_geometry(True, 33) == ([9, 3, 3], [8, 3, 3])           # 33 // 4 = 8, 33 - 3 * 8 = 9


@pytest.mark.parametrize("bad,message", [
    ({"video_max_tokens": 0}, "video_max_tokens must be a positive int"),
    ({"video_pooled_size": [4, 8]}, "video_pooled_size must be three positive ints"),
    ({"video_pooled_size": [4, 25, 25]}, "at most the 24 tokens per side"),
    ({"video_pooled_size": [4, 8, 8], "video_max_tokens": 10}, "not both"),
    ({"video_max_tokens": 10, "pooling_mode": "none"}, "needs pooling"),
])
def test_bad_budgets_are_one_clear_error(bad, message):
    config = load_config("tiny")
    for key, value in bad.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=message):
        config.check()


@pytest.mark.parametrize("budget,pooled", BUDGETS[1:], ids=["pooled_size", "max_tokens"])
def test_the_model_pools_each_length_to_the_configs_count_and_the_loop_oracle(budget, pooled):
    model = build_model(small(**budget), seed=1).eval()
    config = model.config
    items = [(frames, True, 0) for frames in FRAMES] + [(1, False, 0)]
    batch = make_batch(config, items, seed=4)
    with torch.no_grad():
        tokens = model.encode_visuals(**visual_kwargs(batch))
        patches = model.vision_patches(batch["pixel_values"])
        text = model.prompt_pooling.encode_prompt(batch["prompt_input_ids"])
        embeds = model.prompt_pooling.embed_patches(patches)
    start = 0
    for (frames, is_video, _), got in zip(items, tokens):
        assert got.shape[0] == config.visual_tokens(frames, is_video) == len(config.placeholders(frames, is_video))
        if is_video:
            kernel, stride = config.pooling_geometry(True, frames)
            _, want_kernel, want_stride = get_size_output_mode((frames, 6, 6), pooled)
            assert (kernel, stride) == (list(want_kernel), list(want_stride))
            part = slice(start, start + frames)
            relevance = backends.relevance_map(embeds[None, part], text, config.relevance_scale)
            loop = pool_loop(patches[None, part], relevance, kernel, stride, config.pooling_temperature)
            want = model.multi_modal_projector(loop.float().flatten(1, 3))[0]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        start += frames


def test_a_training_batch_of_different_lengths_runs_forward_and_backward():
    model = build_model(small(video_max_tokens=16), seed=2)
    model.apply_trainable()
    items = [(8, True, 0), (100, True, 1), (1, False, 1), (32, True, 2), (256, True, 2)]
    batch = make_batch(model.config, items, seed=6)
    assert model.placeholder_mask(batch["input_ids"]).sum(1).tolist() == [16, 16 + 4, 32]
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    groups = model.parameter_groups()
    for group in ("prompt_tower", "projector", "llm"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in groups[group]), group
    with torch.no_grad():                         # each item pools as it would alone
        together = model.encode_visuals(**visual_kwargs(batch))
        start = 0
        for i, (frames, is_video, row) in enumerate(items):
            alone = model.encode_visuals(batch["pixel_values"][start:start + frames], torch.tensor([frames]),
                                         torch.tensor([is_video]), torch.tensor([0]),
                                         batch["prompt_input_ids"][row:row + 1])
            torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)
            start += frames


def test_the_frame_check_counts_the_budget():
    config = load_config("tiny")                  # an LLM of 4096 positions
    with pytest.raises(ValueError, match="256 frames becomes 8192 visual tokens.*at most 127 frames fit.*"
                                         "--max-visual-tokens"):
        check_frame_budget(config, 256)
    config.video_max_tokens = 1024
    for frames in (1, 256, 10_000):
        check_frame_budget(config, frames)
    config.video_max_tokens = 5000
    with pytest.raises(ValueError, match="at most 127 frames fit"):
        check_frame_budget(config, 256)


def test_the_frame_check_holds_a_bt_adapter_to_its_time_embedding():
    config = load_config("tiny")
    config.btadapter_depth, config.btadapter_max_frames = 2, 8
    config.check()
    check_frame_budget(config, 8)
    with pytest.raises(ValueError, match=r"^--frames 9: a video of 9 frames is longer than the BT-Adapter's time "
                                         r"embedding of 8 frames \(btadapter_max_frames\); give at most 8$"):
        check_frame_budget(config, 9)
    config.video_max_tokens = 64                  # a token budget makes room in the LLM, not in the time embedding
    check_frame_budget(config, 8)
    with pytest.raises(ValueError, match="btadapter_max_frames"):
        check_frame_budget(config, 256)
    assert default_frames(config) == 8            # a checkpoint that names no frames reads what the adapter holds
    config.btadapter_max_frames = 64
    assert default_frames(config) == DEFAULT_FRAMES == 32
    config.default_frames = 48
    assert default_frames(config) == 48
    config.btadapter_depth = 0                    # no adapter: only the LLM's positions count
    check_frame_budget(config, 256)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    write_video(root / "v.mp4", 12, size=(48, 64), noise=False)
    write_image(root / "i.png")
    write_text(root / "text.mp4")
    adapter = {"btadapter_depth": 2, "btadapter_max_frames": 4}        # the branch runs beside layer 0 of 2
    return {"root": root, "model": save_tiny_checkpoint(root / "model"),
            "adapter": save_tiny_checkpoint(root / "adapter", overrides=adapter)}


def test_a_bt_adapter_model_reads_videos_up_to_its_time_embedding_and_any_image(bed, capsys):
    """More frames are refused before decoding (the bad-input table runs that through the CLI)."""
    argv = ["infer", "--model", str(bed["adapter"]), "--video", str(bed["root"] / "v.mp4"), "--prompt", "what",
            "--max-new-tokens", "2", "--json"]
    for frames in (["--frames", "4"], []):       # the limit itself, and the default the checkpoint leaves open
        assert main([*argv, *frames]) == 0
        assert json.loads(capsys.readouterr().out)["visual_tokens"] == 2 * 8 * 8
    pipe = Pipeline.load(bed["adapter"], device="cpu")
    assert pipe.frames == 4
    with pytest.raises(ValueError, match="--frames 5: .*btadapter_max_frames"):    # not "cannot open it"
        pipe.read(bed["root"] / "text.mp4", frames=5)
    image = pipe.read(bed["root"] / "i.png", frames=5)                        # one frame, whatever --frames says
    assert not image.is_video and image.patches.shape[0] == 1


def test_infer_takes_any_frames_the_budget_allows(bed, capsys):
    argv = ["infer", "--model", str(bed["model"]), "--video", str(bed["root"] / "v.mp4"), "--prompt", "what",
            "--max-new-tokens", "2", "--json", "--frames"]
    assert main([*argv, "256"]) == 2                                      # 8192 tokens: refused, naming the way out
    assert "--max-visual-tokens" in capsys.readouterr().err
    for frames, budget, tokens in [(256, ["--max-visual-tokens", "1024"], 1024), (100, ["--pooled-size", "4,8,8"], 256),
                                   (1, ["--max-visual-tokens", "1024"], 64)]:
        assert main([*argv, str(frames), *budget]) == 0
        assert json.loads(capsys.readouterr().out)["visual_tokens"] == tokens


@pytest.mark.parametrize("command", ["eval", "explain"])
def test_eval_and_explain_take_the_budget(command):
    extra = {"eval": ["--benchmark", "videomme", "--data", "x"], "explain": ["--video", "v", "--prompt", "p", "--out", "o.png"]}[command]
    args = build_parser().parse_args([command, "--model", "m", *extra, "--pooled-size", "16x8x8"])
    assert args.pooled_size == [16, 8, 8] and args.max_visual_tokens is None
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--model", "m", *extra, "--pooled-size", "4,8,8", "--max-visual-tokens", "9"])


def test_training_data_of_two_frame_counts_pools_each_video_to_the_budget(tmp_path):
    """The real data path (the tiny recipe's build_data and MicroBatches, as the trainer builds them): two datasets
    sampling 8 and 24 frames of the same 24-frame clips under video_max_tokens 320. 8 frames keep the fixed kernels
    (4 x 8 x 8 = 256 fit); 24 would be 12 x 8 x 8, so T' = 320 // 64 = 5 (320 tokens)."""
    model = save_tiny_checkpoint(tmp_path / "model")
    data = write_training_data(tmp_path / "data", videos=2, images=1, frames=24, dataset_frames=(8, 24))
    cfg = load_train_config(RECIPE, [f"model={model}", f"data={data}", f"output_dir={tmp_path / 'run'}", "frames=null",
                                     "model_overrides.video_max_tokens=320", "micro_batch_size=3"])
    config = model_config_with(cfg.model, cfg.model_overrides)
    assert (config.video_max_tokens, config.video_kernel) == (320, [2, 3, 3])       # merged with the recipe's
    assert (config.visual_tokens(8, True), config.visual_tokens(24, True)) == (256, 320)
    data_config, dataset, collator = build_data(cfg, config, *load_tokenizers(cfg.model))
    stream = MicroBatches(dataset, collator, cfg.micro_batch_size, 0, 1, cfg.seed, 0, data_config.max_skip_fraction)
    batches = [batch for batch, _ in zip(stream.batches(Position()), range(stream.per_epoch))]
    assert len(batches) == 2 and not any(b["skipped"] for b in batches)
    lengths = []
    for batch in batches:
        frames, is_video, rows = (batch[k].tolist() for k in ("visual_frames", "visual_is_video", "visual_sample"))
        assert batch["pixel_values"].shape[0] == sum(frames)
        for row in range(len(batch["input_ids"])):              # one medium a sample: its run of placeholders
            (t, video), = [(t, v) for t, v, r in zip(frames, is_video, rows) if r == row]
            token = config.video_token_id if video else config.image_token_id
            assert int((batch["input_ids"][row] == token).sum()) == config.visual_tokens(t, video)
        lengths.append(sorted({t for t, v in zip(frames, is_video) if v}))
    assert {t for batch in lengths for t in batch} == {8, 24} and [8, 24] in lengths     # seed 0 mixes one batch
    mixed = batches[lengths.index([8, 24])]
    net = load_model(cfg.model, config=config)
    net.apply_trainable()
    out = net(**{k: v for k, v in mixed.items() if k != "skipped"}, use_cache=False)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for group in ("prompt_tower", "projector", "llm"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in net.parameter_groups()[group]), group

"""`ppllava bench e2e`: the three pooling modes of one model, timed end to end (no timing is asserted)."""

import json

import pytest
import torch

from backends.memory import _CpuPeak, peak_meter
from ppllava.bench.e2e import MODES, bench_e2e, format_report, model_config
from ppllava.bench.e2e import synthetic_frames
from ppllava.bench.sweep import answer_all, bench_pipeline, bench_sweep, format_sweep
from ppllava.cli import main

TINY_E2E = ["bench", "e2e", "--device", "cpu", "--model-size", "tiny", "--frames", "4", "--new-tokens", "2",
            "--repeats", "1", "--resolution", "64x48", "--text-tokens", "8"]


def _tokens(mode: str, frames: int) -> int:
    config = model_config("tiny")
    config.pooling_mode = mode
    return config.visual_tokens(frames, True)


def test_bench_e2e_json_has_every_field_and_the_tokens_of_each_mode(capsys):
    assert main([*TINY_E2E, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("device", "device_name", "dtype", "torch", "threads", "machine", "model", "video", "new_tokens",
                "repeats", "timing", "memory", "vision_s", "modes", "target", "paper_seconds_per_video"):
        assert key in report, key
    assert report["device"] == "cpu" and report["new_tokens"] == 2 and report["video"]["frames"] == 4
    model = report["model"]
    assert model["size"] == "tiny" and model["llm"]["model_type"] == "qwen2" and model["vision"]["patch_grid"] == 24
    assert set(model["parameters"]) == {"vision_tower", "prompt_tower", "projector", "llm"}
    assert list(report["modes"]) == list(MODES)
    # 4 frames of 24x24 patches: 2304 tokens in full, 2x8x8 = 128 pooled (kernel 2, 3, 3)
    assert [report["modes"][m]["visual_tokens"] for m in MODES] == [_tokens(m, 4) for m in MODES] == [2304, 128, 128]
    rows = report["modes"]
    # the placeholders plus the 8 text tokens are what the LLM read
    assert [rows[m]["llm_input_tokens"] for m in MODES] == [2304 + 8, 128 + 8, 128 + 8]
    measurable = peak_meter(torch.device("cpu")).ok            # Linux with /proc/self/clear_refs and glibc
    for mode, row in rows.items():
        # one timed run each (--repeats 1): the figures are that run's, and the second token comes after the first
        assert len(row["total_runs_s"]) == len(row["first_token_runs_s"]) == 1
        assert row["first_token_s"] == row["first_token_runs_s"][0] and row["total_s"] == row["total_runs_s"][0]
        assert row["tokens_2_s"] == row["total_s"]
        assert 0 < row["first_token_s"] < row["total_s"]
        # the ratios are those of the reported times
        assert row["speedup_vs_none"] == pytest.approx(rows["none"]["total_s"] / row["total_s"], rel=1e-12)
        assert row["ratio_vs_average"] == pytest.approx(row["total_s"] / rows["average"]["total_s"], rel=1e-12)
        assert row["speedup_vs_none_first_token"] == pytest.approx(
            rows["none"]["first_token_s"] / row["first_token_s"], rel=1e-12)
        assert row["ratio_vs_average_first_token"] == pytest.approx(
            row["first_token_s"] / rows["average"]["first_token_s"], rel=1e-12)
        # a run allocates: where the peak can be measured it is, and it is more than nothing
        if measurable:
            assert row["peak_memory_bytes"] is not None and row["peak_memory_bytes"] > 0, (mode, row)
        else:
            assert row["peak_memory_bytes"] is None
    assert (report["memory"] == _CpuPeak.method) == measurable
    target = report["target"]
    assert target["prompt_speedup_vs_none"] == rows["prompt"]["speedup_vs_none"]
    assert target["prompt_over_average"] == rows["prompt"]["ratio_vs_average"]
    assert target["met"] == (target["prompt_speedup_vs_none"] >= 3.0 and target["prompt_over_average"] <= 1.15)


def test_cpu_peak_memory_is_the_growth_of_the_block_even_when_freed_inside_it():
    """The meter behind the bench's peak_memory_bytes, against allocations of known size."""
    meter = peak_meter(torch.device("cpu"))
    if not meter.ok:
        pytest.skip("no /proc/self/clear_refs or glibc here: the bench reports null")
    size = 64 * 2**20
    with meter:
        block = torch.ones(size // 4)                      # 64 MiB, every page touched
        del block                                          # freed before the block ends: the peak still saw it
    # memory the allocator already held resident may serve a little of it
    assert size - 4 * 2**20 <= meter.peak < size + 32 * 2**20
    with meter:
        small = torch.ones(2**20 // 4)                     # 1 MiB: the reset forgot the 64 MiB peak above
        del small
    assert meter.peak < 16 * 2**20


def test_bench_e2e_table_and_a_config_of_the_callers(capsys):
    import torch

    config = model_config("tiny")
    config.pooling_mode = "average"                      # the caller's mode is no bias: all three are timed
    report = bench_e2e(torch.device("cpu"), torch.float32, frames=3, new_tokens=1, repeats=1, resolution=(48, 48),
                       text_tokens=4, config=config)
    assert report["model"]["size"] == "custom" and config.pooling_mode == "average"
    assert [report["modes"][m]["visual_tokens"] for m in MODES] == [_tokens(m, 3) for m in MODES] == [1728, 64, 64]
    table = format_report(report)
    assert all(f"\n{mode} " in table for mode in MODES) and "visual tokens" in table


@pytest.mark.parametrize("args,message", [
    (["--frames", "1"], "--frames must be >= 2"),
    (["--new-tokens", "0"], "--new-tokens: must be positive, got 0"),
    (["--repeats", "0"], "--repeats: must be positive, got 0"),
    (["--model-size", "huge"], "--model-size: unknown 'huge'"),
    (["--model-size", "/no/such.yaml"], "--model-size /no/such.yaml does not exist"),
    (["--resolution", "64"], "--resolution: expected WIDTHxHEIGHT"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["--frames", "32,x"], "--frames: expected comma-separated positive integers, got '32,x'"),
    (["--batch-size", "1,0"], "--batch-size: expected comma-separated positive integers, got '1,0'"),
    (["--questions", "0"], "--questions: must be positive, got 0"),
    (["--videos", "-1"], "--videos: must be positive, got -1"),
    (["--frames", "4", "--max-visual-tokens", "0"], "--max-visual-tokens must be >= 1, got 0"),
    (["--max-visual-tokens", "-5"], "--max-visual-tokens must be >= 1, got -5"),
])
def test_bench_e2e_bad_arguments_exit_2(capsys, args, message):
    assert main(["bench", "e2e", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_sweep_reports_every_pair_at_the_budget_and_its_figures_agree(capsys):
    budget = {"max_visual_tokens": 64, "pooled_size": None}
    report = bench_sweep(torch.device("cpu"), torch.float32, (4, 8), (1, 2), "tiny", questions=2, videos=1,
                         new_tokens=1, repeats=1, resolution=(48, 48), text_tokens=3, budget=budget)
    rows = report["rows"]
    # every (frames, batch) pair, then one question at a time with a vision pass each (2 questions per video)
    assert [(r["frames"], r["batch_size"], r["shared_vision"]) for r in rows] == [
        (4, 1, True), (4, 2, True), (8, 1, True), (8, 2, True), (4, 1, False), (8, 1, False)]
    config = model_config("tiny")
    config.video_max_tokens = 64
    assert report["budget"]["video_max_tokens"] == 64
    # both lengths pool to the budget: 4 frames keep their (2, 3, 3) kernel's 2x8x8 = 128 > 64, so both derive
    assert [r["visual_tokens"] for r in rows] == [config.visual_tokens(r["frames"], True) for r in rows]
    assert all(r["visual_tokens"] <= 64 for r in rows)
    by = {(r["frames"], r["batch_size"], r["shared_vision"]): r for r in rows}
    for r in rows:
        (run,) = r["runs_s"]                                # --repeats 1: the figures are that run's
        assert r["seconds_per_video"] == pytest.approx(run, rel=1e-12)              # one video
        assert r["questions_per_s"] == pytest.approx(2 / run, rel=1e-12)           # its two questions
        assert 0 < r["vision_s_per_video"] < r["seconds_per_video"]
        assert r["vision_s_per_video"] + r["beyond_vision_s_per_video"] == pytest.approx(run, rel=1e-9)
        base = by[(r["frames"], 1, True)]
        assert r["questions_per_s_over_batch_1"] == pytest.approx(r["questions_per_s"] / base["questions_per_s"])
        if r["shared_vision"]:
            first = by[(4, r["batch_size"], True)]
            assert r["beyond_vision_over_first_frames"] == pytest.approx(
                r["beyond_vision_s_per_video"] / first["beyond_vision_s_per_video"])
        else:
            assert r["beyond_vision_over_first_frames"] is None
    target = report["target"]
    worst = max(r["beyond_vision_over_first_frames"] for r in rows if r["shared_vision"])
    assert target["beyond_vision_over_first_frames"] == worst
    assert target["frames_met"] == (worst <= 1.2)
    assert "batch_met" not in target                        # no batch 8 was run
    table = format_sweep(report)
    assert "questions/s" in table and "at most 64 visual tokens" in table and "* one question at a time" in table


def test_the_sweep_encodes_each_video_once_while_its_questions_last():
    config = model_config("tiny")
    pipe = bench_pipeline(config, torch.device("cpu"), torch.float32, seed=0, frames=2)
    encode, passes = pipe.from_frames, []

    def counting(frames, is_video, name):
        passes.append(name)
        return encode(frames, is_video, name)

    pipe.from_frames = counting
    videos = [synthetic_frames(2, 48, 48, seed) for seed in (0, 1)]
    questions = [["what is red?", "where is the cat?", "who cooks?"], ["how many people?", "what plays?", "why?"]]
    # chunks of 2: (v0 v0) (v0 v1) (v1 v1): video 0 is kept into the second chunk, each is encoded once
    for batch in (1, 2, 4, 6):
        passes.clear()
        answer_all(pipe, videos, questions, batch, new_tokens=2)
        assert passes == ["video 0", "video 1"], batch
    passes.clear()
    answer_all(pipe, videos, questions, 1, new_tokens=2, share=False)     # the reference: a pass per question
    assert passes == ["video 0"] * 3 + ["video 1"] * 3


def test_min_new_tokens_holds_back_every_stop_token_of_a_batch():
    config = model_config("tiny")
    pipe = bench_pipeline(config, torch.device("cpu"), torch.float32, seed=0, frames=2)
    visual = pipe.from_frames(synthetic_frames(2, 48, 48, 3), True)
    requests = [(visual, "what is red?"), (None, "who cooks?")]
    free = pipe.ask_batch(requests, max_new_tokens=12)
    # make the token the first row picks first a stop token: unheld, the rows stop at it (the first at once)
    stop = free[0].ids[0]
    where = [a.ids.index(stop) if stop in a.ids else 12 for a in free]
    pipe.stop_ids = pipe.stop_ids + [stop]
    stopped = pipe.ask_batch(requests, max_new_tokens=12)
    held = pipe.ask_batch(requests, max_new_tokens=12, min_new_tokens=12)
    assert [a.tokens for a in stopped] == where
    assert [a.tokens for a in held] == [12, 12]
    for a, b in zip(stopped, held):              # greedy: the same tokens up to where the row stopped, then no stop
        assert b.ids[:a.tokens] == a.ids and not set(b.ids) & set(pipe.stop_ids)

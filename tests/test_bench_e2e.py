"""`ppllava bench e2e`: the three pooling modes of one model, timed end to end (no timing is asserted)."""

import json

import pytest

from ppllava.bench.e2e import MODES, bench_e2e, format_report, model_config
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
    for mode, row in report["modes"].items():
        assert row["llm_input_tokens"] == row["visual_tokens"] + 8
        assert 0 < row["first_token_s"] <= row["total_s"]
        assert len(row["total_runs_s"]) == len(row["first_token_runs_s"]) == 1
        assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] >= 0
        for key in ("speedup_vs_none", "ratio_vs_average", "speedup_vs_none_first_token", "ratio_vs_average_first_token"):
            assert row[key] > 0
    assert report["modes"]["none"]["speedup_vs_none"] == 1 == report["modes"]["average"]["ratio_vs_average"]
    assert set(report["target"]) >= {"prompt_speedup_vs_none", "prompt_over_average", "met"}


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
])
def test_bench_e2e_bad_arguments_exit_2(capsys, args, message):
    assert main(["bench", "e2e", *args]) == 2
    assert message in capsys.readouterr().err

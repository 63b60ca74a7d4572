"""`ppllava bench vision`: the vision tower stopped at its feature layer against the full forward, on the tiny
architecture's tower (2 layers, 24x24 patches + CLS) and 2-3 frames (no timing is asserted)."""

import json

import pytest
import torch

from backends.memory import _CpuPeak, peak_meter
from ppllava.bench.vision import WAYS, FeaturesDiffer, bench_vision, format_report, tower_config
from ppllava.cli import main
from ppllava.model.factory import load_config
from ppllava.model.towers import ClipFamily

TINY = ["bench", "vision", "--device", "cpu", "--tower", "tiny", "--frames", "2,3", "--repeats", "2"]
TOKENS, HIDDEN = 24 * 24 + 1, 32                        # tiny.yaml's CLIP tower: 48 px / patch 2, + CLS; hidden 32


def test_json_has_every_field_and_figures_consistent_with_the_peaks(capsys):
    assert main([*TINY, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("device", "device_name", "dtype", "torch", "threads", "machine", "tower", "repeats", "seed",
                "timing", "memory", "hidden_state_bytes", "frames"):
        assert key in report, key
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["repeats"] == 2
    assert set(report["machine"]) == {"cpu_model", "logical_cpus"} and "one call" in report["timing"]
    tower = report["tower"]
    assert tower["name"] == "tiny" and tower["model_type"] == "clip_vision_model" and tower["patch_grid"] == 24
    # feature layer -2 of 2 layers: hidden_states[1], after the first layer; the second is skipped
    assert (tower["layers"], tower["feature_layer"], tower["layers_run"], tower["layers_skipped"]) == (2, -2, 1, 1)
    measurable = peak_meter(torch.device("cpu")).ok        # Linux with /proc/self/clear_refs and glibc
    assert (report["memory"] == _CpuPeak.method) == measurable
    assert [row["frames"] for row in report["frames"]] == [2, 3]
    for row in report["frames"]:
        assert row["tokens_per_frame"] == TOKENS
        # the full forward really kept layers + 1 states: the count the analytical figure uses
        assert row["full_forward_states"] == tower["layers"] + 1 == 3
        for way in WAYS:
            runs = row[way]["runs_s"]
            assert len(runs) == 2 and min(runs) > 0 and row[way]["seconds"] == pytest.approx(sum(runs) / 2)
        assert row["time_saved_fraction"] == pytest.approx(
            1 - row["early_stop"]["seconds"] / row["full_forward"]["seconds"], rel=1e-12)
        early, full = row["early_stop"]["peak_memory_bytes"], row["full_forward"]["peak_memory_bytes"]
        if measurable:
            assert early > 0 and full > 0
            assert row["memory_saved_bytes"] == full - early
            assert row["memory_ratio"] == pytest.approx(full / early, rel=1e-12)
        else:
            assert early is full is row["memory_saved_bytes"] is row["memory_ratio"] is None
        # the analytical bytes by hand: F frames x 577 tokens x 32 wide x 4 bytes a state, 3 of them kept in full
        state = row["frames"] * TOKENS * HIDDEN * 4
        assert row["hidden_state_bytes"] == {"state": state, "full_forward": 3 * state, "early_stop": state,
                                             "saved": 2 * state, "ratio": 3}


def test_bfloat16_states_count_two_bytes_and_the_table_has_a_row_per_frame_count():
    report = bench_vision(torch.device("cpu"), torch.bfloat16, tower="tiny", frames=(2,), repeats=1)
    assert report["dtype"] == "bfloat16"
    assert report["frames"][0]["hidden_state_bytes"]["state"] == 2 * TOKENS * HIDDEN * 2
    table = format_report(report)
    assert "\n     2 " in table and "skips 1" in table and "time saved" in table


def test_paths_that_differ_are_refused(capsys, monkeypatch):
    """The full forward made to pick the layer before the feature layer: the check sees it, nothing is printed."""
    real = ClipFamily.vision_features
    monkeypatch.setattr(ClipFamily, "vision_features", lambda self, outputs, layer: real(self, outputs, layer - 1))
    with pytest.raises(FeaturesDiffer, match="refusing to report"):
        bench_vision(torch.device("cpu"), torch.float32, tower="tiny", frames=(2,), repeats=1)
    assert main([*TINY, "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "refusing to report" in err and len(err.strip().splitlines()) == 1


def test_the_default_stand_in_has_the_real_towers_depth_grid_and_feature_layer():
    stand_in, real = tower_config("clip-l-depth"), load_config("llava-next-7b")
    for config in (stand_in, real):
        assert config.vision_config.num_hidden_layers == 24 and config.native_grid == 24
        assert config.vision_feature_layer == -2 and config.vision_config.model_type == "clip_vision_model"
    v = stand_in.vision_config
    assert (v.hidden_size, v.num_attention_heads, v.intermediate_size) == (64, 4, 256)
    assert real.vision_config.hidden_size == 1024                   # the stand-in did not narrow the real config


@pytest.mark.parametrize("args,message", [
    (["--frames", "0"], "--frames: expected comma-separated positive integers, got '0'"),
    (["--frames", "32,-1"], "--frames: expected comma-separated positive integers"),
    (["--frames", "a,b"], "--frames: expected comma-separated positive integers"),
    (["--frames", ""], "--frames: expected comma-separated positive integers"),
    (["--tower", "huge"], "--tower: unknown 'huge' (known: clip-l-depth,"),
    (["--repeats", "0"], "--repeats: must be positive, got 0"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, args, message):
    assert main(["bench", "vision", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and len(err.strip().splitlines()) == 1

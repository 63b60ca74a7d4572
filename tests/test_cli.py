import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppllava.cli import main

TINY_BENCH = ["bench", "ops", "--frames", "4", "--size", "6", "--relevance-dim", "16", "--pool-dims", "8,32",
              "--repeats", "1"]


def test_env_json_lists_device_and_ops(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"]["dist_backend"] == "gloo"
    assert {o["op"]: o["impl"] for o in info["ops"]} == {"relevance_map": "cpu", "prompt_guided_pool": "cpu"}
    assert info["libraries"]["torch"]


def test_bench_ops_json(capsys):
    assert main([*TINY_BENCH, "--batch", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    pool = report["ops"]["prompt_guided_pool"]
    assert set(pool) == {"D=8", "D=32"}
    assert set(pool["D=32"]) == {"native", "cpu", "unfold", "avg_pool3d", "read_x"}
    assert all(t["fwd_ms"] > 0 and t.get("fwd_bwd_ms", 1) > 0 for rows in pool.values() for t in rows.values())
    ratio = report["ratios"]["prompt_guided_pool D=32"]
    assert ratio["unfold_over_impl_fwd"] == pytest.approx(pool["D=32"]["unfold"]["fwd_ms"] / pool["D=32"]["cpu"]["fwd_ms"])
    assert set(report["ops"]["relevance_map"]["C=16"]) == {"native", "cpu"}
    assert ratio["native_over_impl_fwd"] == pytest.approx(pool["D=32"]["native"]["fwd_ms"] / pool["D=32"]["cpu"]["fwd_ms"])
    # bandwidth: x (B=2, 4x6x6, all inside windows) read once plus the (2, 2, 2, 2) output written, float32
    moved = (2 * 4 * 6 * 6 + 2 * 2 * 2 * 2) * 32 * 4
    assert report["shape"]["B"] == 2 and ratio["impl_fwd_GBps"] == pytest.approx(moved / pool["D=32"]["cpu"]["fwd_ms"] / 1e6)
    assert report["peak_memory_GBps"] is None and ratio["impl_fwd_fraction_of_peak"] is None  # the CPU reports none


def test_planted_small(capsys):
    assert main(["bench", "planted", "--frames", "8", "--size", "6"]) == 0
    out = capsys.readouterr().out
    assert "visual tokens: 288 before pooling -> 16 after (18x fewer)" in out


@pytest.mark.parametrize("argv,message", [
    (["bench", "ops", "--pool-dims", "x"], "--pool-dims: expected comma-separated positive integers"),
    (["bench", "ops", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["env", "--device", "npu"], "device 'npu' needs the torch_npu package"),
    (["bench", "planted", "--frames", "1"], "--frames must be >= 2"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith(f"ppllava {argv[0]}: error:")


def test_console_script_help_and_usage_errors():
    exe = Path(sys.executable).with_name("ppllava")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ppllava"]
    root = str(Path(__file__).resolve().parents[1])             # this checkout's ppllava, whatever is installed
    env = dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    help_text = subprocess.run([*cmd, "parity", "check", "--help"], capture_output=True, text=True, env=env)
    assert help_text.returncode == 0 and "--golden" in help_text.stdout
    for argv, named, prog in ((["parity", "check"], "--golden", "ppllava parity check"),
                              (["infer", "--model", "m", "--frames", "abc"], "--frames", "ppllava infer"),
                              (["parity", "check", "--golden", "g", "--bogus"], "--bogus", "ppllava parity check"),
                              (["nope"], "nope", "ppllava")):
        bad = subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env)
        lines = bad.stderr.strip().splitlines()                 # one line, as every error a user can fix
        assert bad.returncode == 2 and len(lines) == 1 and named in lines[0] and "--help" in lines[0], bad.stderr
        assert lines[0].startswith(f"{prog}: error:"), lines[0]


def test_traceback_switch_shows_the_traceback_instead_of_the_one_line_error(tmp_path):
    """README: errors you can fix print one line and exit 2; PPLLAVA_TRACEBACK=1 shows the traceback instead."""
    exe = Path(sys.executable).with_name("ppllava")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ppllava"]
    missing = tmp_path / "no-such-golden.pt"
    root = str(Path(__file__).resolve().parents[1])             # this checkout's ppllava, whatever is installed
    env = dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    env.pop("PPLLAVA_TRACEBACK", None)
    argv = [*cmd, "parity", "check", "--golden", str(missing)]
    runs = {switch: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(env, PPLLAVA_TRACEBACK="1") if switch else env)
            for switch in (False, True)}
    (plain_out, plain_err), (trace_out, trace_err) = (runs[s].communicate(timeout=300) for s in (False, True))
    message = f"golden file {missing} does not exist"
    assert runs[False].returncode == 2, plain_err
    assert plain_err.strip().splitlines() == [f"ppllava parity: error: {message} (make one with "
                                              f"`ppllava parity record --out {missing}`)"]
    assert runs[True].returncode == 1, trace_err                  # Python's own exit status for an uncaught error
    lines = trace_err.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):" and lines[-1].startswith(f"FileNotFoundError: {message}")
    assert any(line.strip().startswith('File "') and line.strip().endswith("in load_golden")
               for line in lines)                                  # the frame that raised it
    assert "ppllava parity: error:" not in trace_err and plain_out == trace_out == ""


def test_bench_ops_reports_unsupported_references_instead_of_failing(capsys):
    # CPU avg_pool3d has no bfloat16 kernel (nor has the 910B): the bench says so and goes on
    assert main([*TINY_BENCH, "--dtype", "bfloat16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    avg = report["ops"]["prompt_guided_pool"]["D=32"]["avg_pool3d"]
    ratio = report["ratios"]["prompt_guided_pool D=32"]["avg_pool3d_over_impl_fwd"]
    assert ("unsupported" in avg) == (ratio is None) != ("fwd_ms" in avg)  # a ratio exactly when it was timed
    assert report["ops"]["prompt_guided_pool"]["D=32"]["cpu"]["fwd_bwd_ms"] > 0


def test_bench_rejects_non_positive_sizes(capsys):
    assert main(["bench", "ops", "--repeats", "0"]) == 2
    assert "--repeats: must be positive, got 0" in capsys.readouterr().err


def test_bench_data_json_counts_every_frame_it_times(capsys):
    pytest.importorskip("av")
    args = ["bench", "data", "--readers", "pyav,frames", "--workers", "0", "--clips", "2", "--clip-frames", "10",
            "--frames", "4", "--size", "32", "--resolution", "64x48", "--passes", "1", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["reader"], r["workers"]) for r in report["results"]] == [("pyav", 0), ("frames", 0)]
    assert all(r["frames_per_s"] > 0 for r in report["results"])
    assert report["frames_per_clip"] == 4 and "2 generated H.264 clips, 10 frames of 64x48" == report["videos"]


@pytest.mark.parametrize("args,message", [
    (["--readers", "opencv"], "--readers: unknown ['opencv']"),
    (["--workers", "0,x"], "--workers: expected comma-separated counts"),
    (["--resolution", "640"], "--resolution: expected WIDTHxHEIGHT"),
    (["--frames", "0"], "--frames: must be positive, got 0"),
    (["--videos", "/no/such/folder"], "--videos /no/such/folder: not a folder"),
])
def test_bench_data_bad_arguments_exit_2(capsys, args, message):
    assert main(["bench", "data", *args]) == 2
    assert message in capsys.readouterr().err

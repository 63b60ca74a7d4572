"""`ppllava gpu-check` in dry mode, as CI runs it: every step starts (its command line parses, its inputs exist), the
step that needs no GPU runs, the GPU steps skip with the reason, and one JSON report is written."""

import json

from ppllava import gpucheck
from ppllava.cli import main

GPU_STEPS = ["triton", "parity", "bench-ops", "bench-e2e"]


def test_dry_run_starts_every_step_and_skips_the_gpu_ones(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["gpu-check", "--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [s["name"] for s in report["steps"]] == ["env", *GPU_STEPS]
    assert report["passed"] and report["dry_run"] and report["ran"] == ["env"] and report["skipped"] == GPU_STEPS
    env = report["steps"][0]
    assert env["status"] == "passed" and "torch" in env["result"]["libraries"]
    for step in report["steps"][1:]:
        assert step["gpu"] and step["status"] == "skipped" and "started: its command line parses" in step["reason"]
        assert step["command"].startswith("python -m ")
    bench_ops = next(s for s in report["steps"] if s["name"] == "bench-ops")["command"]
    assert "--dtype bfloat16 --batch 4 --pool-dims 4096" in bench_ops
    assert "gpu-check on " in capsys.readouterr().err


def test_a_step_that_cannot_start_fails_the_report(tmp_path, monkeypatch, capsys):
    broken = gpucheck.Step("parity", ["-m", "ppllava", "parity", "check", "--golden", "g"], gpu=True,
                           inputs=["tests/data/parity/nothing-here.safetensors"])
    bad_args = gpucheck.Step("bench-ops", ["-m", "ppllava", "bench", "ops", "--no-such-flag"], gpu=True)
    monkeypatch.setattr(gpucheck, "steps", lambda: [broken, bad_args])
    out = tmp_path / "report.json"
    assert main(["gpu-check", "--dry-run", "--out", str(out)]) == 1
    rows = {s["name"]: s for s in json.loads(out.read_text())["steps"]}
    assert rows["parity"]["status"] == "failed" and "nothing-here.safetensors" in rows["parity"]["reason"]
    assert rows["bench-ops"]["status"] == "failed" and "does not parse" in rows["bench-ops"]["reason"]
    capsys.readouterr()
    assert main(["gpu-check", "--dry-run", "--step", "nope", "--out", str(out)]) == 2

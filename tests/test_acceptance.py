"""`ppllava gpu-check` and `ppllava npu-check` in dry mode, as CI runs them: every step starts (its command line
parses, its inputs exist), the steps that need no device run (the environment, the CPU parity record), the device
steps skip with the reason, and one JSON report is written."""

import json

import pytest
from safetensors import safe_open

from ppllava import acceptance
from ppllava.cli import main

DEVICE_STEPS = {"gpu-check": ["triton", "parity-ops", "parity", "bench-ops", "bench-e2e"],
                "npu-check": ["parity-ops", "parity", "bench-ops", "bench-e2e"]}


@pytest.mark.parametrize("command,device", [("gpu-check", "cuda"), ("npu-check", "npu")])
def test_dry_run_starts_every_step_and_skips_the_device_ones(command, device, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main([command, "--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert report["passed"] and report["dry_run"] and report["device_type"] == device
    assert report["ran"] == ["env", "record-cpu"] and report["skipped"] == DEVICE_STEPS[command]
    assert "torch" in steps["env"]["result"]["libraries"]
    for name in DEVICE_STEPS[command]:
        step = steps[name]
        assert step["on_device"] and step["status"] == "skipped" and "started: its command line parses" in step["reason"]
        assert step["command"].startswith("python -m ") and (name == "triton" or f"--device {device}" in step["command"])
    # the CPU record was written where parity-ops reads it, in the dtypes it checks
    record = tmp_path / "report-files" / "ops-cpu.safetensors"
    assert str(record) in steps["parity-ops"]["command"]
    with safe_open(str(record), "pt") as f:
        dtypes = {key.split("|")[0] for key in f.keys()}
    assert "float32" in dtypes and "bfloat16" in dtypes and "float16" not in dtypes, sorted(dtypes)[:5]
    assert "--dtype bfloat16 --batch 4 --pool-dims 4096" in steps["bench-ops"]["command"]
    assert f"{command} on " in capsys.readouterr().err


def test_without_the_device_a_real_run_fails_naming_why(tmp_path, capsys):
    """Not dry, on a machine without the device: the device steps fail (a check that touched no NPU has not passed),
    the steps that need none still run."""
    for command, check in acceptance.CHECKS.items():
        if acceptance.find_device(check.device)[0] is not None:
            continue                                                    # the device is here: nothing to show
        out = tmp_path / f"{command}.json"
        assert main([command, "--step", "env", "--step", "bench-ops", "--out", str(out)]) == 1
        report = json.loads(out.read_text())
        rows = {s["name"]: s for s in report["steps"]}
        assert not report["passed"] and report["failed"] == ["bench-ops"] and report["ran"] == ["env"]
        assert rows["bench-ops"]["reason"].startswith(f"no {check.device} device here: ") and report["device_absent"]
    capsys.readouterr()


def test_a_step_that_cannot_start_fails_the_report(tmp_path, monkeypatch, capsys):
    broken = acceptance.Step("parity", ["-m", "ppllava", "parity", "check", "--golden", "g"], True,
                             inputs=["tests/data/parity/nothing-here.safetensors"])
    bad_args = acceptance.Step("bench-ops", ["-m", "ppllava", "bench", "ops", "--no-such-flag"], True)
    monkeypatch.setattr(acceptance, "steps", lambda check, work: [broken, bad_args])
    out = tmp_path / "report.json"
    assert main(["gpu-check", "--dry-run", "--out", str(out)]) == 1
    rows = {s["name"]: s for s in json.loads(out.read_text())["steps"]}
    assert rows["parity"]["status"] == "failed" and "nothing-here.safetensors" in rows["parity"]["reason"]
    assert rows["bench-ops"]["status"] == "failed" and "does not parse" in rows["bench-ops"]["reason"]
    capsys.readouterr()
    assert main(["npu-check", "--dry-run", "--step", "nope", "--out", str(out)]) == 2


def test_the_steps_run_through_on_a_device_that_is_here(tmp_path):
    """The same step list pointed at this machine's CPU, run for real (not dry): the CPU record is made, checked
    by parity-ops, the test bed checked against the committed golden, each command's JSON result captured. This is
    the plumbing a GPU or NPU run goes through (paths, flags, outputs), only the device differs."""
    here = acceptance.Check("cpu-check", "cpu", "this CPU")
    report = acceptance.run(here, tmp_path / "files", only=["record-cpu", "parity-ops", "parity"])
    steps = {s["name"]: s for s in report["steps"]}
    assert report["passed"] and report["ran"] == ["record-cpu", "parity-ops", "parity"], acceptance.summary(report)
    assert (tmp_path / "files" / "ops-cpu.safetensors").is_file()
    assert steps["parity-ops"]["returncode"] == 0 and "result" in steps["parity-ops"]
    assert steps["parity"]["returncode"] == 0 and "result" in steps["parity"]

"""`ppllava gpu-check` / `ppllava npu-check`: the one-command acceptance run on a machine with one NVIDIA GPU or
one Ascend NPU, as one JSON report.

Steps, in order, each a child process (so one step's crash or hang does not take the others with it), all within
one deadline (8 minutes):
    env          `ppllava env --json` (runs everywhere: what the report was taken on)
    triton       (GPU) the Triton kernel tests on the GPU (tests/test_triton_ops.py, without the interpreter)
    record-cpu   `ppllava parity record` on this machine's CPU: both ops, their chain and the tiny model, forward
                 and backward, in float32 and bfloat16 (runs everywhere, seconds; float16 is left out: its chain
                 row is tighter than float16 allows for kernels not bit-identical to the CPU's, README "Ascend NPU")
    parity-ops   `ppllava parity check` of those cases on the device against that CPU record
    parity       `ppllava parity check` of the test bed on the device against the committed float32 CPU golden
    bench-ops    `ppllava bench ops` in bfloat16, B=4, D=4096
    bench-e2e    `ppllava bench e2e` at a 7B-shaped model (llava-next-7b, random weights) in bfloat16
Every step starts: its command line is parsed and its inputs are checked. With --dry-run the device steps then
stop there, each with the reason (CI runs both checks that way); without the device and without --dry-run they
fail, naming why the device is not there.
Figures the bench steps measure belong in BENCHMARKS.md only from a run on that device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 480
TAIL = 4000                                   # characters of a step's output kept in the report
TESTBED, GOLDEN = "checkpoints/testbed", "tests/data/parity/testbed-cpu-float32.safetensors"


@dataclass
class Step:
    name: str
    argv: list[str]                           # run as `python ARGV...` from the repository root
    on_device: bool                           # needs the check's device
    inputs: list[str] = field(default_factory=list)   # files it reads (relative to the root, or absolute)
    outputs: list[str] = field(default_factory=list)  # files it writes: removed before it runs (no stale record)
    env: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    command: str                              # the CLI command: gpu-check, npu-check
    device: str                               # the torch device type it checks: cuda, npu
    hardware: str                             # in words, for --help and the summary
    kernel_tests: str | None = None           # the device's own kernels' tests, run there (None: it has none)


CHECKS = {"gpu-check": Check("gpu-check", "cuda", "one NVIDIA GPU", kernel_tests="tests/test_triton_ops.py"),
          "npu-check": Check("npu-check", "npu", "one Ascend NPU (910B)")}


def steps(check: Check, work: Path) -> list[Step]:
    """The steps of `check`; files it writes (the CPU record) go to the folder `work`."""
    device = check.device
    cpu_record = str(work / "ops-cpu.safetensors")
    tests = check.kernel_tests
    own = [Step("triton", ["-m", "pytest", "-q", "-p", "no:cacheprovider", tests], True, inputs=[tests],
                env={"TRITON_INTERPRET": "0"})] if tests else []
    return [
        Step("env", ["-m", "ppllava", "env", "--json"], False),
        *own,
        Step("record-cpu", ["-m", "ppllava", "parity", "record", "--device", "cpu", "--dtype", "float32,bfloat16",
                                "--out", cpu_record], False, outputs=[cpu_record]),
        Step("parity-ops", ["-m", "ppllava", "parity", "check", "--golden", cpu_record, "--device", device, "--json"],
             True, inputs=[cpu_record]),
        Step("parity", ["-m", "ppllava", "parity", "check", "--model", TESTBED, "--golden", GOLDEN, "--device", device,
                        "--json"], True, inputs=[f"{TESTBED}/config.json", GOLDEN]),
        Step("bench-ops", ["-m", "ppllava", "bench", "ops", "--device", device, "--dtype", "bfloat16", "--batch", "4",
                           "--pool-dims", "4096", "--json"], True),
        Step("bench-e2e", ["-m", "ppllava", "bench", "e2e", "--device", device, "--dtype", "bfloat16",
                           "--model-size", "llava-next-7b", "--repeats", "1", "--new-tokens", "16", "--json"], True,
             inputs=["configs/model/llava-next-7b.yaml"]),
    ]


def find_device(device_type: str) -> tuple[str | None, str]:
    """(the name of the first `device_type` device, "") here, or (None, why there is none)."""
    from backends.device import DeviceUnavailable, device_name, resolve_device

    try:
        device = resolve_device(device_type)
    except DeviceUnavailable as e:
        return None, str(e)
    try:
        return device_name(device), ""
    except Exception as e:                  # e.g. a driver/runtime mismatch: the device is there, its name is not
        return f"{device} (name unknown: {' '.join(str(e).split())})", ""


def _start(step: Step) -> str | None:
    """Start a step without running it: its command line parses and its inputs exist. The reason it cannot run,
    or None."""
    missing = [p for p in step.inputs if not (ROOT / p).exists()]
    if missing:
        return f"missing input(s): {', '.join(missing)}"
    if step.argv[:2] == ["-m", "ppllava"]:
        from .cli import build_parser

        try:
            build_parser().parse_args(step.argv[2:])
        except SystemExit:
            return f"the command line does not parse: ppllava {' '.join(step.argv[2:])}"
    return None


def _execute(step: Step, row: dict, left: float, deadline_s: float) -> None:
    """Run one step as a child process within `left` seconds; its outcome, output tail and JSON result into row."""
    start = time.monotonic()
    env = {**os.environ, **step.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, *step.argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=left)
        row.update(status="passed" if proc.returncode == 0 else "failed", returncode=proc.returncode,
                   reason="" if proc.returncode == 0 else f"exit code {proc.returncode}")
        out = proc.stdout
        row["output_tail"] = (out + proc.stderr)[-TAIL:]
        if out.strip().startswith("{"):
            try:
                row["result"] = json.loads(out)
            except ValueError:
                pass
    except subprocess.TimeoutExpired:
        row.update(status="failed", reason=f"stopped at the {deadline_s:.0f} s deadline")
    row["seconds"] = round(time.monotonic() - start, 2)


def run(check: Check, work: Path, dry_run: bool = False, deadline_s: float = DEADLINE_S,
        only: list[str] | None = None) -> dict:
    name, absent = find_device(check.device)
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    begin = time.monotonic()
    rows = []
    for step in steps(check, work):
        if only and step.name not in only:
            continue
        row = {"name": step.name, "command": " ".join(["python", *step.argv]), "on_device": step.on_device,
               "seconds": 0.0}
        problem = _start(step)
        left = deadline_s - (time.monotonic() - begin)
        started = "; started: its command line parses and its inputs exist"
        if problem:
            row.update(status="failed", reason=problem)
        elif step.on_device and dry_run:
            row.update(status="skipped", reason=("--dry-run" if name else f"no {check.device} device here") + started)
        elif step.on_device and name is None:               # a real run without its device has not passed
            row.update(status="failed", reason=f"no {check.device} device here: {absent}")
        elif left <= 0:
            row.update(status="failed", reason=f"not run: the {deadline_s:.0f} s deadline had passed")
        else:
            for made in step.outputs:
                Path(made).unlink(missing_ok=True)
            _execute(step, row, left, deadline_s)
        rows.append(row)
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    return {"check": check.command, "device_type": check.device, "device": name, "device_absent": absent,
            "dry_run": dry_run,
            "deadline_s": deadline_s, "seconds": round(time.monotonic() - begin, 2), "passed": not failed,
            "failed": failed, "ran": [r["name"] for r in rows if r["status"] == "passed"],
            "skipped": [r["name"] for r in rows if r["status"] == "skipped"], "steps": rows}


def write(report: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def summary(report: dict) -> str:
    where = report["device"] or f"no {report['device_type']} device ({report['device_absent']})"
    lines = [f"{report['check']} on {where}{' (dry run)' if report['dry_run'] else ''}: "
             f"{'passed' if report['passed'] else 'FAILED'} in {report['seconds']:.1f} s"]
    for r in report["steps"]:
        lines.append(f"  {r['name']:<10} {r['status']:<8} {r['seconds']:>7.1f} s  {r.get('reason', '')}".rstrip())
    return "\n".join(lines)

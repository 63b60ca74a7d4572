"""`ppllava gpu-check`: the one-command acceptance run on a machine with one NVIDIA GPU, as one JSON report.

Steps, in order, each a child process (so one step's crash or hang does not take the others with it), all within
one deadline (8 minutes):
    env          `ppllava env --json` (runs everywhere: what the report was taken on)
    triton       the Triton kernel tests on the GPU (tests/test_triton_ops.py, without the interpreter)
    parity       `ppllava parity check` of the test bed on the GPU against the committed float32 CPU golden
    bench-ops    `ppllava bench ops` in bfloat16, B=4, D=4096
    bench-e2e    `ppllava bench e2e` at a 7B-shaped model (llava-next-7b, random weights) in bfloat16
Every step starts: its command line is parsed and its inputs are checked. Without a CUDA GPU, or with --dry-run,
the GPU steps then stop there, each with the reason, and the report says so (CI runs it that way).
Figures the bench steps measure belong in BENCHMARKS.md only from a run on that GPU.
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


@dataclass
class Step:
    name: str
    argv: list[str]                           # run as `python ARGV...` from the repository root
    gpu: bool                                 # needs a CUDA GPU
    inputs: list[str] = field(default_factory=list)   # files it reads (relative to the root)
    env: dict = field(default_factory=dict)


def steps() -> list[Step]:
    testbed, golden = "checkpoints/testbed", "tests/data/parity/testbed-cpu-float32.safetensors"
    return [
        Step("env", ["-m", "ppllava", "env", "--json"], gpu=False),
        Step("triton", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_triton_ops.py"], gpu=True,
             inputs=["tests/test_triton_ops.py"], env={"TRITON_INTERPRET": "0"}),
        Step("parity", ["-m", "ppllava", "parity", "check", "--model", testbed, "--golden", golden,
                        "--device", "cuda", "--json"], gpu=True, inputs=[f"{testbed}/config.json", golden]),
        Step("bench-ops", ["-m", "ppllava", "bench", "ops", "--device", "cuda", "--dtype", "bfloat16", "--batch", "4",
                           "--pool-dims", "4096", "--json"], gpu=True),
        Step("bench-e2e", ["-m", "ppllava", "bench", "e2e", "--device", "cuda", "--dtype", "bfloat16",
                           "--model-size", "llava-next-7b", "--repeats", "1", "--new-tokens", "16", "--json"], gpu=True,
             inputs=["configs/model/llava-next-7b.yaml"]),
    ]


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


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


def run(dry_run: bool = False, deadline_s: float = DEADLINE_S, only: list[str] | None = None) -> dict:
    gpu = gpu_name()
    begin = time.monotonic()
    rows = []
    for step in steps():
        if only and step.name not in only:
            continue
        row = {"name": step.name, "command": " ".join(["python", *step.argv]), "gpu": step.gpu, "seconds": 0.0}
        problem = _start(step)
        left = deadline_s - (time.monotonic() - begin)
        started = "; started: its command line parses and its inputs exist"
        if problem:
            row.update(status="failed", reason=problem)
        elif step.gpu and gpu is None:
            row.update(status="skipped", reason="no CUDA GPU here (torch.cuda.is_available() is False)" + started)
        elif step.gpu and dry_run:
            row.update(status="skipped", reason="--dry-run" + started)
        elif left <= 0:
            row.update(status="failed", reason=f"not run: the {deadline_s:.0f} s deadline had passed")
        else:
            start = time.monotonic()
            env = {**os.environ, **step.env, "PYTHONPATH": os.pathsep.join(
                filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
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
        rows.append(row)
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    return {"gpu": gpu, "dry_run": dry_run, "deadline_s": deadline_s,
            "seconds": round(time.monotonic() - begin, 2), "passed": not failed, "failed": failed,
            "ran": [r["name"] for r in rows if r["status"] == "passed"],
            "skipped": [r["name"] for r in rows if r["status"] == "skipped"], "steps": rows}


def write(report: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def summary(report: dict) -> str:
    lines = [f"gpu-check on {report['gpu'] or 'no GPU'}{' (dry run)' if report['dry_run'] else ''}: "
             f"{'passed' if report['passed'] else 'FAILED'} in {report['seconds']:.1f} s"]
    for r in report["steps"]:
        lines.append(f"  {r['name']:<10} {r['status']:<8} {r['seconds']:>7.1f} s  {r.get('reason', '')}".rstrip())
    return "\n".join(lines)

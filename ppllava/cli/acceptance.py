"""`ppllava gpu-check` and `ppllava npu-check`: the acceptance run on one NVIDIA GPU or one Ascend NPU (kernel tests
where the device has its own, parity against CPU records, bench ops and bench e2e at 7B shape) as one JSON report;
with --dry-run the device steps start and skip, without the device they fail."""

from __future__ import annotations

import sys
from pathlib import Path


def _add(sub, check) -> None:
    from ppllava.acceptance import DEADLINE_S, steps

    names = [s.name for s in steps(check, Path("."))]
    kernels = f"the kernel tests ({check.kernel_tests}) on the device, " if check.kernel_tests else ""
    p = sub.add_parser(check.command, help=f"one-command acceptance run on {check.hardware}, one JSON report",
                       description=f"On a machine with {check.hardware}: {kernels}`parity record` of both ops, their "
                                   f"chain and the tiny model on this machine's CPU and `parity check` of them on the "
                                   f"device, `parity check` of the test bed against the committed float32 CPU golden, "
                                   f"`bench ops` (bfloat16, B=4, D=4096) and `bench e2e` at a 7B-shaped model (random "
                                   f"weights), within {DEADLINE_S // 60} minutes, each step a child process. Every step "
                                   f"starts (command line and inputs checked); with --dry-run the device steps skip with the "
                                   f"reason, without the device ({check.device}) they fail. Exit 1 if a step failed.")
    p.add_argument("--out", default=f"build/{check.command}.json",
                   help=f"the JSON report (default build/{check.command}.json); the CPU record goes to the folder "
                        f"OUT without its suffix, plus -files")
    p.add_argument("--dry-run", action="store_true", help="start every step, run only those that need no device")
    p.add_argument("--deadline", type=float, default=DEADLINE_S, help=f"seconds for all steps (default {DEADLINE_S})")
    p.add_argument("--step", action="append", default=None,
                   help=f"only this step (repeatable): {', '.join(names)}")
    p.set_defaults(run=run, check=check, step_names=names)


def add_parser(sub) -> None:
    from ppllava.acceptance import CHECKS

    for check in CHECKS.values():
        _add(sub, check)


def run(args) -> int:
    from ppllava.acceptance import run as check, summary, write

    unknown = sorted(set(args.step or ()) - set(args.step_names))
    if unknown:
        raise ValueError(f"--step {', '.join(unknown)}: unknown; the steps are {', '.join(args.step_names)}")
    if args.deadline <= 0:
        raise ValueError(f"--deadline must be > 0 seconds, got {args.deadline}")
    out = Path(args.out)
    report = check(args.check, out.with_name(f"{out.stem}-files"), dry_run=args.dry_run, deadline_s=args.deadline,
                   only=args.step)
    write(report, out)
    print(summary(report), file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0 if report["passed"] else 1

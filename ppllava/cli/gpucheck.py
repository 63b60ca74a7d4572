"""`ppllava gpu-check`: the GPU acceptance run (Triton kernel tests, parity against the CPU golden, bench ops and
bench e2e at 7B shape) as one JSON report; without a GPU, or with --dry-run, the GPU steps start and skip."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    from ppllava.gpucheck import DEADLINE_S

    p = sub.add_parser("gpu-check", help="one-command GPU acceptance run, one JSON report",
                       description="On a machine with one NVIDIA GPU: the Triton kernel tests on the GPU, `parity "
                                   "check` of the test bed against the committed float32 CPU golden, `bench ops` "
                                   "(bfloat16, B=4, D=4096) and `bench e2e` at a 7B-shaped model (random weights), "
                                   f"within {DEADLINE_S // 60} minutes, each step a child process. Every step starts "
                                   "(command line and inputs checked); without a CUDA GPU, or with --dry-run, the GPU "
                                   "steps skip with the reason. Exit 1 if a step failed.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/gpu-check.json", help="the JSON report (default build/gpu-check.json)")
    p.add_argument("--dry-run", action="store_true", help="start every step, run only those that need no GPU")
    p.add_argument("--deadline", type=float, default=DEADLINE_S, help=f"seconds for all steps (default {DEADLINE_S})")
    p.add_argument("--step", action="append", default=None, help="only this step (repeatable): env, triton, parity, "
                                                                  "bench-ops, bench-e2e")
    p.set_defaults(run=run)


def run(args) -> int:
    from ppllava.gpucheck import run as check, steps, summary, write

    names = [s.name for s in steps()]
    unknown = sorted(set(args.step or ()) - set(names))
    if unknown:
        raise ValueError(f"--step {', '.join(unknown)}: unknown; the steps are {', '.join(names)}")
    if args.deadline <= 0:
        raise ValueError(f"--deadline must be > 0 seconds, got {args.deadline}")
    report = check(dry_run=args.dry_run, deadline_s=args.deadline, only=args.step)
    write(report, args.out)
    print(summary(report), file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if report["passed"] else 1

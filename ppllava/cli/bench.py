"""`ppllava bench ops`: speed of every op implementation beside plain-pooling references."""

from __future__ import annotations

import json
import sys

from ppllava.bench.ops import bench_ops, format_report

from . import options


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (ops)", description="Benchmarks. Figures in BENCHMARKS.md come from these.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    ops = kinds.add_parser(
        "ops", help="forward and forward+backward time of both ops at the paper's shape",
        description="Time relevance_map and prompt_guided_pool (each implementation available on the device) at "
                    "the paper's shape, B=1, 32 frames of 24x24 patches, beside the original's unfold "
                    "formulation, avg_pool3d and one read of x (x.sum()). Median of --repeats runs after a warm-up.")
    options.add_device(ops)
    options.add_dtype(ops)
    options.add_geometry(ops)
    ops.add_argument("--relevance-dim", type=int, default=1024, help="embedding width C for relevance_map (default 1024)")
    ops.add_argument("--pool-dims", default="1024,4096", help="feature widths D for prompt_guided_pool (default 1024,4096)")
    ops.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    ops.add_argument("--json", action="store_true", help="print one JSON object with the timings and ratios")
    ops.set_defaults(run=run_ops)


def _positive_ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) <= 0:
        raise ValueError(f"--{name}: expected comma-separated positive integers, got {text!r}")
    return values


def run_ops(args) -> int:
    options.check_geometry(args)
    for name in ("relevance_dim", "repeats"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    progress = None if args.json else (lambda label: print(f"  timing {label} ...", file=sys.stderr, flush=True))
    report = bench_ops(options.device(args), options.dtype(args), frames=args.frames, size=args.size,
                       relevance_dim=args.relevance_dim, pool_dims=_positive_ints(args.pool_dims, "pool-dims"),
                       repeats=args.repeats, progress=progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0

"""`ppllava bench ops`: speed of every op implementation beside plain-pooling references."""

from __future__ import annotations

import json
import os
import sys

from ppllava.bench.ops import bench_ops, format_report

from . import options


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (ops, data)", description="Benchmarks. Figures in BENCHMARKS.md come from these.")
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

    data = kinds.add_parser(
        "data", help="video frames decoded and preprocessed per second, per reader and worker count",
        description="Time the training input path for video: open a clip, sample --frames frames (segment centres), "
                    "decode and preprocess them (short side to --size, centre crop, normalise), through a DataLoader "
                    "with each --workers count, for every installed reader and for folders of extracted JPEG frames. "
                    "Clips are generated (H.264, --resolution) unless --videos names a folder of real ones.")
    data.add_argument("--readers", default=None,
                      help="comma-separated readers to time (default: every installed one, then 'frames')")
    data.add_argument("--workers", default="0,1,2", help="DataLoader worker counts (default 0,1,2)")
    data.add_argument("--frames", type=int, default=32, help="frames sampled per clip (default 32)")
    data.add_argument("--size", type=int, default=336, help="preprocessed frame size (default 336, CLIP-L/336)")
    data.add_argument("--clips", type=int, default=8, help="generated clips (default 8)")
    data.add_argument("--clip-frames", type=int, default=96, help="frames in each generated clip (default 96)")
    data.add_argument("--resolution", default="320x240", help="generated clips' WIDTHxHEIGHT (default 320x240)")
    data.add_argument("--videos", default=None, help="time the video files in this folder instead of generated clips")
    data.add_argument("--passes", type=int, default=2, help="timed passes over the clips after a warm-up pass (default 2)")
    data.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    data.set_defaults(run=run_data)


def _positive_ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) <= 0:
        raise ValueError(f"--{name}: expected comma-separated positive integers, got {text!r}")
    return values


def _resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        width = height = 0
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"--resolution: expected WIDTHxHEIGHT with even sides >= 16, got {text!r}")
    return width, height


def run_data(args) -> int:
    from ppllava.bench.data import bench_data, format_report
    from ppllava.data.readers import READERS

    for name in ("frames", "size", "clips", "clip_frames", "passes"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    readers = args.readers.split(",") if args.readers else None
    unknown = sorted(set(readers or ()) - set(READERS))
    if unknown:
        raise ValueError(f"--readers: unknown {unknown} (known: {', '.join(READERS)})")
    if args.videos and not os.path.isdir(args.videos):
        raise ValueError(f"--videos {args.videos}: not a folder")
    workers = tuple(int(w) for w in args.workers.split(",") if w.strip().isdigit())
    if not workers or len(workers) != len(args.workers.split(",")):
        raise ValueError(f"--workers: expected comma-separated counts >= 0, got {args.workers!r}")
    width, height = _resolution(args.resolution)
    progress = None if args.json else (lambda label: print(f"  timing {label} ...", file=sys.stderr, flush=True))
    report = bench_data(readers, workers, clips=args.clips, clip_frames=args.clip_frames, frames=args.frames,
                        height=height, width=width, size=args.size, passes=args.passes, videos=args.videos,
                        progress=progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


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

"""`ppllava demo`: the main job (`make demo`)."""

from __future__ import annotations

from ppllava.demo import format_demo, run_demo

from . import options


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on the auto-detected device",
                       description="Run relevance_map and prompt_guided_pool on paper-sized features (32 frames of "
                                   "24x24 patches, 768-d CLIP embeddings, 1024-d features) with a planted answer, and "
                                   "print the visual tokens before and after pooling and the time.")
    options.add_device(p)
    options.add_dtype(p)
    p.add_argument("--frames", type=int, default=32, help="frames (default 32)")
    p.add_argument("--size", type=int, default=24, help="patches per side (default 24)")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.frames < 2 or args.size < 3:
        raise ValueError("--frames must be >= 2 and --size >= 3 for the (2, 3, 3) kernel")
    print(format_demo(run_demo(options.device(args), options.dtype(args), frames=args.frames, size=args.size,
                               planted_frame=args.frames // 2)))
    return 0

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
    options.add_geometry(p)
    p.set_defaults(run=run)


def run(args) -> int:
    options.check_geometry(args)
    print(format_demo(run_demo(options.device(args), options.dtype(args), frames=args.frames, size=args.size,
                               planted_frame=args.frames // 2)))
    return 0

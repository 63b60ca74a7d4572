"""`ppllava demo`: a test bed checkpoint (python -m ppllava.testbed.build) on fresh synthetic clips."""

from __future__ import annotations

import json
import random
from pathlib import Path

from . import options


def add_parser(sub) -> None:
    from ppllava.testbed import CHECKPOINT      # the path only: the demo's imports load when it runs

    p = sub.add_parser(
        "demo", help="a test bed checkpoint answers questions about fresh synthetic clips",
        description="Load a test bed checkpoint (made by python -m ppllava.testbed.build) on the auto-detected "
                    "device, draw fresh clips of moving coloured shapes, answer questions about them with prompt-guided "
                    "and with average pooling at the same token budget, print the answers beside the truth, the visual "
                    "tokens before and after pooling and the seconds per video, and draw the relevance map of one "
                    "question about the shape that is there only briefly.")
    p.add_argument("--model", default=str(CHECKPOINT), help=f"checkpoint folder (default {CHECKPOINT})")
    p.add_argument("--clips", type=int, default=20, help="fresh clips to ask about (default 20)")
    p.add_argument("--seed", type=int, default=None, help="seed of the clips (default: a new one each run, printed)")
    p.add_argument("--out", default="demo_relevance.png", help="the relevance picture (default demo_relevance.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    options.add_device(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ppllava.infer import Pipeline
    from ppllava.infer.explain import check_out
    from ppllava.testbed import synthetic
    from ppllava.testbed.demo import format_demo, run_demo

    if args.clips < 1:
        raise ValueError(f"--clips must be >= 1, got {args.clips}")
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model {args.model} is not a folder (build it: python -m ppllava.testbed.build --out "
                                f"{args.model})")
    check_out(args.out)
    options.quiet_loading()
    pipeline = Pipeline.load(args.model, options.device(args), frames=synthetic.DEFAULT_FRAMES)
    seed = random.randrange(2 ** 31) if args.seed is None else args.seed
    report = run_demo(pipeline, args.clips, seed, args.out)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_demo(report, str(pipeline.device)))
    return 0

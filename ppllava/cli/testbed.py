"""`ppllava testbed tiny`: the tiny model and data that configs/train/tiny.yaml trains."""

from __future__ import annotations

import argparse

EPILOG = """\
example (on a fresh clone, from its root: the recipe's paths are relative to the current folder):
  ppllava testbed tiny --out build/tiny
  ppllava train --config configs/train/tiny.yaml              # 1 process on the CPU, a minute or two
"""


def add_parser(sub) -> None:
    p = sub.add_parser("testbed", help="write a tiny model and synthetic data to train (configs/train/tiny.yaml)",
                       description="Test bed helpers. `tiny` writes OUT/model (a tiny random checkpoint of the `tiny` "
                                   "architecture, tokenizers trained offline) and OUT/data (synthetic clips of moving "
                                   "shapes with questions, and data.yaml): what configs/train/tiny.yaml trains. "
                                   "Nothing is downloaded; a rerun keeps what is complete.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_subparsers(dest="testbed", metavar="WHAT", required=True)
    t = which.add_parser("tiny", help="the tiny recipe's model and data")
    t.add_argument("--out", default="build/tiny", help="folder to write model/ and data/ to (default build/tiny, "
                                                       "where configs/train/tiny.yaml looks)")
    t.add_argument("--clips", type=int, default=16, help="synthetic training clips (default 16, 4 samples each)")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights and the clips (default 0)")
    t.set_defaults(run=run)


def run(args) -> int:
    from ppllava.testbed.tiny import write_tiny

    result = write_tiny(args.out, clips=args.clips, seed=args.seed)
    for part in ("model", "data"):
        state = "wrote" if part in result["written"] else "kept"
        print(f"{state} {result[part]}")
    print("next: ppllava train --config configs/train/tiny.yaml" + ("" if str(args.out) == "build/tiny" else
          f" model={result['model']} data={result['data']}"))
    return 0

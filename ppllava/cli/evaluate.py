"""`ppllava eval`: multiple-choice video QA accuracy of a checkpoint, on one process or many (torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

EPILOG = """\
examples:
  ppllava eval --benchmark mvbench --data MVBench/json --videos MVBench/video --model models/lv7b --out mvbench.json
  ppllava eval --benchmark nextqa --data nextqa/test.csv --videos NExTVideo --model models/lv7b   # map_vid_vidorID.json beside the csv
  torchrun --nproc-per-node 8 -m ppllava eval --benchmark videomme --data videomme.jsonl --model models/lv7b

With --device cuda:1 (or npu:1) one process runs there; under torchrun each process takes the device of
its local rank. Each question is asked with its options as (A) ... (B) ... and "Answer with the option's letter"; the
letter is read from the answer ("B", "(B)", "Answer: B", or the one option text it contains). Under
torchrun the videos are dealt out round-robin, each process answering every question of its videos; rank 0
gathers, prints the accuracy overall and per category, and writes --out (every question's output, parsed
choice and correctness) atomically. With --out, each process also appends its answers as they come to a
journal beside it (.OUT.answers-RANK.jsonl): after a crash, rerun the same command and only the questions not yet
answered (and those that failed) are asked; the journals are removed once --out is written.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="multiple-choice video QA accuracy (MVBench, Video-MME, NExT-QA, EgoSchema)",
                       description="Answer a benchmark's multiple-choice questions with a PPLLaVA checkpoint and score "
                                   "them. Formats: see ppllava/evaluate/formats.py.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, choices=["mvbench", "videomme", "nextqa", "egoschema"])
    p.add_argument("--data", required=True, help="the annotation file (or MVBench's folder of task files)")
    p.add_argument("--videos", default=None,
                   help="folder the videos' paths are relative to (default: the data's folder; MVBench: its video/ "
                        "folder, whose per-task sub-folders are found by task)")
    p.add_argument("--model", required=True, help="a PPLLaVA checkpoint folder")
    p.add_argument("--out", default=None,
                   help="write the full results (JSON) here; a rerun after a crash resumes from the answers so far")
    options.add_device(p)
    options.add_reader(p)
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's)")
    options.add_frames(p)
    options.add_budget(p)
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per answer (default 16)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions (a quick check)")
    p.add_argument("--batch-size", type=int, default=1, metavar="B",
                   help="questions answered together through the LLM (default 1; the same answers); the questions "
                        "of one video come one after the other and share its frames")
    p.add_argument("--scored-only", action="store_true",
                   help="skip questions without a known answer (e.g. EgoSchema beyond its 500-question subset)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ppllava.errors import UserError
    from ppllava.evaluate import load_benchmark

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: give the number of questions to answer (>= 1), or leave it out for all")
    if args.videos is not None and not Path(args.videos).is_dir():
        raise UserError(f"--videos {args.videos} {'is not a folder' if Path(args.videos).exists() else 'does not exist'}"
                        f"; give the folder the videos' paths are relative to")
    questions = load_benchmark(args.benchmark, args.data, args.videos)
    if args.scored_only:
        questions = [q for q in questions if q.answer is not None]
    if not questions:
        raise ValueError(f"{args.data}: no questions with a known answer")
    questions = questions[:args.limit]
    if args.out:
        options.writable_output(args.out)
    from ppllava import distributed
    from ppllava.evaluate import evaluate, write_json_atomic
    from ppllava.evaluate.journal import Journal
    from ppllava.infer import Pipeline

    options.quiet_loading()
    group = distributed.start(deepspeed=False, device=None if args.device == "auto" else args.device)
    try:
        _check_videos(questions, args.videos, say=group.is_main)
        pipe = Pipeline.load(args.model, device=group.device, dtype=args.dtype, frames=args.frames, reader=args.reader,
                         **options.budget(args))
        if group.is_main:
            options.say_frames(args, pipe)
        journal = Journal(args.out, group.rank, _settings(args)) if args.out else None
        result = evaluate(pipe, questions, group, args.benchmark, args.max_new_tokens, args.batch_size, journal)
        if result is not None:
            if args.out:
                write_json_atomic(args.out, result)
                journal.remove()
            print(format_result(result))
        distributed.stop()
    except BaseException:
        distributed.stop(barrier=False)
        raise
    return 0


def _settings(args) -> dict:
    """What the answers depend on: a journal of other settings is not resumed (evaluate/journal.py)."""
    def absolute(path):
        return None if path is None else str(Path(path).resolve())

    return {"benchmark": args.benchmark, "data": absolute(args.data), "videos": absolute(args.videos),
            **options.run_settings(args)}


def _check_videos(questions, videos, say: bool = True) -> None:
    """Before the model loads: none of the videos there is a wrong --videos (refused); some missing are
    answered as unreadable, which counts them wrong (said on stderr when `say`: by the main process)."""
    import sys

    from ppllava.errors import UserError
    from ppllava.evaluate.formats import missing_videos

    missing = missing_videos(questions)
    count = len({q.video for q in questions})
    if missing and len(missing) == count:
        where = videos or "not given: the folder of the annotation file"
        raise UserError(f"none of the {count} videos exists (the first: {missing[0]}): check --videos ({where})")
    if missing and say:
        print(f"{len(missing)} of {count} videos do not exist (the first: {missing[0]}); their questions count as "
              f"wrong", file=sys.stderr)


def format_result(r: dict) -> str:
    acc = "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
    lines = [f"{r['benchmark']}: accuracy {acc} over {r['scored']} scored of {r['total']} questions "
             f"({r['unparsed']} answers named no option, {r['errors']} unreadable videos; {r['processes']} process(es))"]
    for name, c in [*r["per_category"].items(), *r["per_group"].items()]:
        lines.append(f"  {name:<32} {100 * c['accuracy']:6.2f}%  (n={c['n']})")
    return "\n".join(lines)

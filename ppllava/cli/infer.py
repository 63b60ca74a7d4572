"""`ppllava infer`: answer questions about a video with a PPLLaVA checkpoint, on any device."""

from __future__ import annotations

import argparse
import json
import sys

from . import options

EPILOG = """\
examples:
  ppllava infer --model models/lv7b --video clip.mp4 --prompt "What is the man holding?"
  ppllava infer --model models/lv7b --video clip.mp4 --prompt "..." --device npu --dtype bfloat16 --json
  ppllava infer --model models/lv7b --video clip.mp4 --chat          # one question a line on stdin
  ppllava infer --model models/lv7b --batch questions.jsonl --out answers.jsonl

--batch reads lines of {"video": PATH, "question": TEXT} (optional "id"; relative paths are taken from
the file's folder) and appends {"id", "answer", "tokens", "visual_tokens", "seconds"} or {"id", "error"}
to --out, one line each; rerunning skips the ids answered there and retries the failed ones (a last line
cut short by a crash is dropped and its question answered again). Two questions with the same id are
refused. The exit code is 1 when any question failed.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("infer", help="answer questions about a video (one, a chat, or a JSONL batch)",
                       description="Load a PPLLaVA checkpoint (from `ppllava convert` or `ppllava export`) and answer "
                                   "questions about a video or image. The frames go through the vision tower once; "
                                   "each question pools them anew (the pooling follows the question).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a PPLLaVA checkpoint folder")
    p.add_argument("--video", help="a video file, a folder of frames, or an image")
    p.add_argument("--prompt", help="the question (with --video)")
    p.add_argument("--chat", action="store_true", help="read questions from stdin, one a line, about --video")
    p.add_argument("--batch", metavar="JSONL", help="questions to answer, one JSON object a line")
    p.add_argument("--out", metavar="JSONL", help="where --batch appends its answers")
    p.add_argument("--batch-size", type=int, default=1, metavar="B",
                   help="--batch: questions answered together through the LLM (default 1; the answers are the same); "
                        "the questions of one video are grouped and its frames encoded once")
    options.add_device(p)
    options.add_reader(p)
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's)")
    options.add_frames(p)
    options.add_budget(p)
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--json", action="store_true", help="print one JSON object (answer, timings) instead of streaming")
    p.set_defaults(run=run)


def _check(args) -> None:
    if args.batch:
        if not args.out:
            raise ValueError("--batch needs --out (the JSONL file answers are appended to)")
        if args.video or args.prompt or args.chat:
            raise ValueError("--batch takes its videos and questions from the file: drop --video/--prompt/--chat")
    elif args.chat:
        if args.prompt:
            raise ValueError("--chat reads its questions from stdin: drop --prompt")
    elif not args.prompt:
        raise ValueError("give --prompt (with --video), or --chat, or --batch")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.batch_size > 1 and not args.batch:
        raise ValueError("--batch-size goes with --batch")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")


def run(args) -> int:
    from pathlib import Path

    _check(args)                                              # before the heavy imports: a bad argument is quick
    options.existing_file(args.video, "--video")
    from ppllava.infer.batch import check_settings, read_requests, resume, run_batch

    requests = read_requests(args.batch) if args.batch else None
    done = resume(args.out) if args.batch else None
    if args.batch:
        options.writable_output(args.out)
        settings = options.run_settings(args)                # what the answers already in --out were given with
        check_settings(args.out, settings)
    from ppllava.infer import Pipeline

    options.quiet_loading()
    pipe = Pipeline.load(args.model, device=args.device, dtype=args.dtype, frames=args.frames, reader=args.reader,
                         **options.budget(args))
    options.say_frames(args, pipe)
    if requests is not None:
        result = run_batch(pipe, requests, args.out, args.max_new_tokens, base=Path(args.batch).parent, done=done,
                           batch_size=args.batch_size, settings=settings)
        print(f"answered {result['answered']}, errors {result['errors']}, already in {args.out}: {result['skipped']}",
              file=sys.stderr)
        return 1 if result["errors"] else 0
    visual = pipe.read(args.video) if args.video else None
    if args.chat:
        chat = pipe.chat(visual)
        for line in sys.stdin:
            if line.strip():
                _answer(chat.ask, line, args, visual)
        return 0
    _answer(lambda question, **kw: pipe.ask(visual, question, **kw), args.prompt, args, visual)
    return 0


def _answer(respond, question: str, args, visual) -> None:
    """Stream the answer to the terminal, or print it as one JSON object with its timings."""
    stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
    answer = respond(question, max_new_tokens=args.max_new_tokens, stream=stream)
    if args.json:
        print(json.dumps({"video": args.video, "question": question.strip(), "answer": answer.text,
                          "tokens": answer.tokens, "visual_tokens": answer.visual_tokens,
                          "seconds": {**(visual.seconds if visual else {}), **answer.seconds}}))
    else:
        print()
        if not answer.text:                                   # nothing but whitespace or stop tokens came out
            print(f"(empty answer: {answer.tokens} generated token(s) decode to no text)", file=sys.stderr)

"""`ppllava parity record|check|convert`: golden files that make numbers comparable across machines.

Without --model, the op cases (fixed-seed inputs, forward and backward of each op and the tiny model);
with --model DIR, a whole checkpoint on a video and a question, module by module (ppllava/parity/model.py).
"""

from __future__ import annotations

import argparse
import json

from ppllava.errors import UserError
from ppllava.parity import harness

from . import options

EPILOG = """\
examples:
  ppllava parity record --out golden.safetensors                     # the op cases, 3 dtypes
  ppllava parity check  --golden golden.safetensors --device npu
  ppllava parity record --model ckpt/lv7b --video clip.mp4 --prompt "What happens?" --out lv7b.safetensors \\
      --device cuda --dtype bfloat16                                  # a checkpoint, module by module
  ppllava parity check  --model ckpt/lv7b --golden lv7b.safetensors --device npu --video clip.mp4
"""


def add_parser(sub) -> None:
    p = sub.add_parser("parity", help="record golden results, or check this device against them",
                       description="Backend parity. Without --model: inputs come from fixed seeds on the CPU, so they "
                                   "are the same on every machine; every op runs forward and backward on the chosen "
                                   "device and dtype. With --model: a checkpoint runs on a video and a question and "
                                   "every module that matters is dumped, the frames and token ids with them. `record` "
                                   "writes a golden file (safetensors); `check` compares against one and exits 1 if "
                                   "any tensor fails its dtype's tolerances (or, with --model, the answers or the "
                                   "inputs differ).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    rec = actions.add_parser("record", help="run every case (or a checkpoint) and write a golden file")
    rec.add_argument("--out", required=True, help="golden file to write (written atomically)")
    rec.add_argument("--video", help="with --model: a video file, a folder of frames, or an image")
    rec.add_argument("--prompt", help="with --model: the question")
    rec.add_argument("--grads", action="store_true",
                     help="with --model: also the gradients of the trainable groups for a next-token loss")
    rec.add_argument("--full", action="store_true",
                     help="with --model: keep every tensor whole (default: the LLM's hidden states at every visual "
                          "and the last 16 text positions, 3 frames of each vision layer)")
    rec.add_argument("--frames", type=int, default=32, help="with --model: frames sampled from the video (default 32)")
    rec.add_argument("--max-new-tokens", type=int, default=8, help="with --model: tokens of the answer (default 8)")
    chk = actions.add_parser("check", help="run every case (or the checkpoint) and compare with a golden file")
    chk.add_argument("--golden", required=True, help="golden file from `ppllava parity record`")
    chk.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    chk.add_argument("--video", help="with --model: decode this video here to compare this machine's decoder with the "
                                     "golden's (default: the recorded path, if it exists here)")
    for q in (rec, chk):
        q.add_argument("--model", help="a PPLLaVA checkpoint folder: dump (check) it module by module")
        q.add_argument("--reader", default="auto", help="with --model: the video decoder (auto, decord, pyav, ...)")
        options.add_device(q)
        q.add_argument("--dtype", default=None,
                       help="comma-separated dtypes (default: record float32,bfloat16,float16, or the checkpoint's own "
                            "with --model; check all in the file)")
        q.add_argument("--case", action="append", help="only this case (repeatable); default all")
    conv = actions.add_parser("convert", help="rewrite an old pickle golden file (torch.save) as safetensors")
    conv.add_argument("--golden", required=True, help="the old golden file (.pt)")
    conv.add_argument("--out", required=True, help="the new golden file")
    rec.set_defaults(run=run_record)
    chk.set_defaults(run=run_check)
    conv.set_defaults(run=run_convert)


def _dtypes(args):
    return [d.strip() for d in args.dtype.split(",") if d.strip()] if args.dtype else None


def _model_args(args, action: str) -> None:
    given = [f"--{n.replace('_', '-')}" for n in ("video", "prompt", "grads", "full") if getattr(args, n, None)]
    if args.model is None:
        if given and not (action == "check" and given == ["--video"]):
            raise UserError(f"{', '.join(given)}: only with --model (a checkpoint folder)")
        if action == "check" and args.video:
            raise UserError("--video needs --model (a checkpoint folder)")
        return
    if args.case:
        raise UserError("--case chooses op cases: drop it with --model")
    if action == "record" and (not args.video or not args.prompt):
        raise UserError("--model needs --video and --prompt (the checkpoint runs on them)")
    if action == "record" and args.frames < 1:
        raise UserError(f"--frames must be >= 1, got {args.frames}")


def run_record(args) -> int:
    _model_args(args, "record")
    device = options.device(args)
    if args.model is not None:
        from ppllava.parity.model import record_model, summary_line

        options.existing_file(args.video, "--video")
        options.quiet_loading()
        result = record_model(args.model, args.video, args.prompt, args.out, device, _dtypes(args), args.grads,
                              args.full, args.frames, args.max_new_tokens, args.reader)
        print(summary_line(result, args.out))
        return 0
    golden = harness.record(args.out, device, _dtypes(args) or harness.DEFAULT_DTYPES, harness.select_cases(args.case))
    meta = golden["meta"]
    counts = {d: sum(len(t) for t in cases.values()) for d, cases in golden["results"].items()}
    print(f"wrote {args.out} ({golden['bytes'] / 1e6:.2f} MB): {', '.join(f'{n} tensors in {d}' for d, n in counts.items())} "
          f"on {meta['device']} ({meta['device_name']}), implementations {meta['impls']}")
    return 0


def run_check(args) -> int:
    _model_args(args, "check")
    device = options.device(args)
    if args.model is not None:
        from ppllava.parity.model import check_model, format_report

        options.existing_file(args.video, "--video")
        options.quiet_loading()
        report = check_model(args.model, args.golden, device, _dtypes(args), args.video, args.reader)
        print(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report, args.golden))
        return 0 if report.passed else 1
    golden = harness.load_golden(args.golden)
    rows = harness.check(golden, device, _dtypes(args), harness.select_cases(args.case))
    failed = [r for r in rows if not r.comparison.ok]
    if args.json:
        print(json.dumps({"golden": golden["meta"], "device": str(device), "passed": not failed,
                          "rows": [{"case": r.case, "tensor": r.tensor, "dtype": r.dtype, **r.comparison.as_dict()}
                                   for r in rows]}, indent=2))
    else:
        meta = golden["meta"]
        print(f"golden: {args.golden}, recorded on {meta['device']} ({meta['device_name']}), torch {meta['torch']}, "
              f"implementations {meta['impls']}")
        print(f"checking on {device}\n")
        print(harness.format_table(rows))
        print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def run_convert(args) -> int:
    from ppllava.parity import goldfile

    size = goldfile.convert_legacy(args.golden, args.out)
    print(f"wrote {args.out} ({size / 1e6:.2f} MB) from {args.golden}")
    return 0

"""`ppllava explain`: where a question looks in a video, as a PNG of the sampled frames under a heat map."""

from __future__ import annotations

import argparse
import json

from . import options

EPILOG = """\
examples:
  ppllava explain --model models/lv7b --video clip.mp4 --prompt "What is the man holding?" --out holding.png
  ppllava explain --model models/lv7b --video clip.mp4 --prompt "..." --frames 16 --columns 4 --out r.png --json

The picture: a title with the prompt; then the sampled frames in a grid (left to right, top to bottom),
each under the relevance map the pooling uses for this prompt (the CLIP similarity of the question and
each patch, a softmax over the whole video), upsampled and coloured black (none) -> red -> orange ->
pale yellow (the most relevant patch of the video; one scale for all frames, so frames compare). Under
each frame: its index in the video and its share of the relevance mass (the shares sum to 100%). The
most relevant frame is outlined. With a CLIP vision tower the model sees only the centre square of each
frame: the strips outside it are dimmed.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="draw where a question looks in a video (relevance heat map, PNG)",
                       description="Draw the relevance map of a question over a video's sampled frames: which frames "
                                   "and which patches the prompt-guided pooling weighs most. Writes a PNG grid of the "
                                   "frames, each under a heat map, labelled with its frame index and share of the "
                                   "relevance.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a PPLLaVA checkpoint folder")
    p.add_argument("--video", required=True, help="a video file, a folder of frames, or an image")
    p.add_argument("--prompt", required=True, help="the question whose relevance map is drawn")
    p.add_argument("--out", required=True, metavar="FILE.png", help="the picture to write (PNG, replaced atomically)")
    options.add_device(p)
    options.add_reader(p)
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's)")
    options.add_frames(p)
    options.add_budget(p)
    p.add_argument("--columns", type=int, default=None,
                   help="frames per row of the grid (default: ceil(sqrt(frames)), at most 8)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary (path, frame indices, per-frame shares, peak frame) instead")
    p.set_defaults(run=run)


def run(args) -> int:
    from ppllava.infer import Pipeline
    from ppllava.infer.explain import check_out, explain

    if not args.prompt.strip():
        raise ValueError("the prompt is empty: ask a question")
    if args.columns is not None and args.columns < 1:
        raise ValueError(f"--columns must be >= 1, got {args.columns}")
    check_out(args.out)
    options.writable_output(args.out)
    options.existing_file(args.video, "--video")
    options.quiet_loading()
    pipe = Pipeline.load(args.model, device=args.device, dtype=args.dtype, frames=args.frames, reader=args.reader,
                         **options.budget(args))
    options.say_frames(args, pipe)
    summary = explain(pipe, args.video, args.prompt, args.out, columns=args.columns)
    if args.json:
        print(json.dumps(summary))
    else:
        count = len(summary["frames"])
        about = (f"{count} frames; the most relevant is frame {summary['peak_frame']}, "
                 f"{summary['peak_share']:.1%} of the relevance" if count > 1 else "one frame")
        print(f"wrote {summary['path']} ({about})")
    return 0

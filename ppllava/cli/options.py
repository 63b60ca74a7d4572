"""Options shared by several commands."""

from __future__ import annotations

import argparse

import torch

from backends.device import dtype_from_name, resolve_device


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda[:N], npu[:N] or auto (the accelerator if there is one; default auto)")


def add_dtype(parser: argparse.ArgumentParser, default: str = "float32") -> None:
    parser.add_argument("--dtype", default=default, help=f"float32, bfloat16 or float16 (default {default})")


def device(args) -> torch.device:
    return resolve_device(args.device)


def dtype(args) -> torch.dtype:
    return dtype_from_name(args.dtype)


def add_geometry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=32, help="frames T (default 32)")
    parser.add_argument("--size", type=int, default=24, help="patches per side H = W (default 24)")


def check_geometry(args) -> None:
    if args.frames < 2 or args.size < 3:
        raise ValueError(f"--frames must be >= 2 and --size >= 3 for the (2, 3, 3) kernel, got {args.frames} and {args.size}")


def add_reader(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reader", default="auto", choices=["auto", "decord", "pyav", "torchcodec"],
                        help="the library that decodes videos (default auto: the first of decord, pyav, torchcodec "
                             "installed, and the next for a file it cannot open, with a warning)")


def add_frames(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=None,
                        help="frames sampled from a video (default: those the checkpoint was trained with, else 32)")


def _pooled_size(text: str) -> list[int]:
    try:
        size = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        size = []
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive ints T',H',W' (e.g. 16,8,8), got {text!r}")
    return size


def add_budget(parser: argparse.ArgumentParser) -> None:
    """A visual token budget for videos (config video_max_tokens / video_pooled_size): any --frames pools to it."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--max-visual-tokens", type=int, default=None, metavar="N",
                       help="pool each video to at most N visual tokens: the checkpoint's kernels while they fit, "
                            "else the temporal (and if needed spatial) kernel and stride derived per video from the "
                            "pooled size, as the authors' output_size mode (default: the checkpoint's pooling)")
    group.add_argument("--pooled-size", type=_pooled_size, default=None, metavar="T,H,W",
                       help="pool each video to T' x H' x W' tokens (fewer frames than T' keep one row per frame)")


def budget(args) -> dict:
    """Pipeline.load's keyword arguments for the budget options."""
    tokens = getattr(args, "max_visual_tokens", None)
    if tokens is not None and tokens < 1:
        from ppllava.errors import UserError

        raise UserError(f"--max-visual-tokens must be >= 1, got {tokens}")
    return {"max_visual_tokens": tokens,
            "pooled_size": getattr(args, "pooled_size", None)}


def say_frames(args, pipe) -> None:
    """Which frame count a run uses when --frames was not given and the checkpoint chose it (stderr)."""
    import sys

    if args.frames is None and getattr(pipe.config, "default_frames", None):
        print(f"{pipe.frames} frames per video, as the checkpoint was trained (--frames to change)", file=sys.stderr)


def quiet_loading() -> None:
    """No transformers progress bar while a checkpoint loads: the commands report what matters themselves."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def existing_file(path: str | None, what: str) -> None:
    """Fail before loading any model when an input path is missing."""
    import os

    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")


def writable_output(path: str, flag: str = "--out") -> None:
    """Fail before any work when no file can be written at `path`: it is a folder, its folder is a file, or the
    nearest existing folder refuses a new file (probed by making and removing one; folders still to be made are
    made by the writer, at the end)."""
    import os
    import tempfile
    from pathlib import Path

    from ppllava.errors import UserError

    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {path} is a folder: give the path of the file to write")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ppllava-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"{flag} {path}: no file can be written in {folder} ({error.strerror or error})") from None


def run_settings(args) -> dict:
    """What a run's answers depend on, from its arguments: answers kept from an earlier run (eval's journal,
    infer --batch's --out) are resumed only under the same."""
    from pathlib import Path

    return {"model": str(Path(args.model).resolve()), "checkpoint": checkpoint_files(args.model),
            "frames": args.frames, "dtype": args.dtype, "reader": args.reader, "max_new_tokens": args.max_new_tokens,
            **budget(args)}


def checkpoint_files(model) -> str:
    """The checkpoint's files as they are now, cheaply (sizes and times, no hashing): weights written again into the
    same folder read differently."""
    import datetime
    from pathlib import Path

    files = [p.stat() for p in Path(model).iterdir() if p.is_file()] if Path(model).is_dir() else []
    newest = max((f.st_mtime_ns for f in files), default=0)
    when = datetime.datetime.fromtimestamp(newest / 1e9, datetime.timezone.utc).isoformat(timespec="microseconds")
    return f"{len(files)} files, {sum(f.st_size for f in files)} bytes, the last written {when}"

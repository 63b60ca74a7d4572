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

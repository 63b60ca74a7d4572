"""`ppllava` command line: one module per command group, each adding its own subparser.

Errors a user can fix (bad arguments, missing files, an unusable device) print one line and exit 2;
set PPLLAVA_TRACEBACK=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from backends import DeviceUnavailable, ImplementationUnavailable

from . import align, bench, convert, demo, env, evaluate, explain, infer, launch, parity, train

COMMANDS = (env, convert, parity, bench, demo, train, align, launch, infer, evaluate, explain)
USER_ERRORS = (ValueError, FileNotFoundError, DeviceUnavailable, ImplementationUnavailable)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppllava",
        description="PPLLaVA: prompt-guided pooling video LLM on CPU, CUDA and Ascend NPU.",
        epilog="Op implementations can be forced with PPLLAVA_OPS (e.g. PPLLAVA_OPS=native); see README.",
    )
    parser.add_argument("--log-level", default=os.environ.get("PPLLAVA_LOG_LEVEL", "WARNING"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args) or 0
    except USER_ERRORS as e:
        if os.environ.get("PPLLAVA_TRACEBACK"):
            raise
        print(f"ppllava {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

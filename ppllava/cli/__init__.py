"""`ppllava` command line: one module per command group, each adding its own subparser.

Errors a user can fix (bad arguments, missing files, an unusable device) print one line and exit 2;
set PPLLAVA_TRACEBACK=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from safetensors import SafetensorError

from backends import DeviceUnavailable, ImplementationUnavailable

from . import acceptance, align, bench, convert, demo, env, evaluate, explain, infer, launch, parity, testbed, train

COMMANDS = (env, convert, parity, bench, demo, testbed, train, align, launch, infer, evaluate, explain, acceptance)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# bad input, whichever library noticed it: our own errors (ppllava.errors.UserError and DataError are ValueErrors),
# a user's path that is missing, a folder, not a folder or not readable, and a damaged safetensors file
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
               DeviceUnavailable, ImplementationUnavailable, SafetensorError)


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{text} ({type(error).__name__})" if isinstance(error, SafetensorError) else text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line as every other error a user can fix (argparse prints the whole usage
    first); --help still prints it all. Subcommands' parsers are of this class too (add_subparsers' default)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")

    def parse_known_args(self, args=None, namespace=None):
        """A command's own parser refuses arguments it does not know, so that the error names that command (argparse
        leaves them to the top parser, whose error says `ppllava: error`)."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ppllava",
        description="PPLLaVA: prompt-guided pooling video LLM on CPU, CUDA and Ascend NPU.",
        epilog="Op implementations can be forced with PPLLAVA_OPS (e.g. PPLLAVA_OPS=native); see README.",
    )
    parser.add_argument("--log-level", default=os.environ.get("PPLLAVA_LOG_LEVEL", "WARNING"), type=str.upper,
                        choices=LOG_LEVELS, help="logging level (default WARNING, or PPLLAVA_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level.upper() not in LOG_LEVELS:              # a default from PPLLAVA_LOG_LEVEL is not checked
        print(f"ppllava: error: PPLLAVA_LOG_LEVEL={args.log_level!r}: one of {', '.join(LOG_LEVELS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.run(args) or 0
        sys.stdout.flush()                                    # a closed pipe shows here, not at exit
        return code
    except USER_ERRORS as e:
        if os.environ.get("PPLLAVA_TRACEBACK"):
            raise
        print(f"ppllava {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:                                   # e.g. `ppllava env --json | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141                                            # 128 + SIGPIPE, as a shell reports it
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`python -m ppllava.evaluate.lmms_run ARGS`: `python -m lmms_eval ARGS` that exits 1 when an evaluation failed.

lmms-eval 0.7.3 catches an exception of an evaluation (a task that does not load, a model that cannot be
built, a metric that fails), prints its traceback and "Error during evaluation", and still exits 0, so a
script or CI job sees success. This runs lmms-eval's own entry point (`lmms_eval.__main__.cli_evaluate`)
with the same arguments and, when any evaluation raised, ends with one line naming it and exit status 1.
(Without it: pass `--verbosity DEBUG`, with which lmms-eval re-raises, exit 1; or check that
`--output_path` received a `*_results.json`.) A request whose video cannot be read does not fail the
evaluation: the adapter counts it as wrong and lists it in the log.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import lmms_eval.__main__ as entry            # lmms-eval's `python -m lmms_eval`

    failed: list[str] = []
    single = entry.cli_evaluate_single

    def recorded(args=None):
        try:
            return single(args)
        except Exception as error:                 # lmms-eval prints it and goes on; we remember it
            failed.append(f"{getattr(args, 'tasks', '?')}: {type(error).__name__}: {error}".splitlines()[0])
            raise

    argv = sys.argv[1:] if argv is None else argv
    saved, sys.argv = sys.argv, ["lmms_eval", *argv]
    entry.cli_evaluate_single = recorded           # cli_evaluate looks the name up in its module
    try:
        entry.cli_evaluate()
    finally:
        entry.cli_evaluate_single, sys.argv = single, saved
    if failed:
        print(f"ppllava lmms_run: error: {len(failed)} evaluation(s) failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

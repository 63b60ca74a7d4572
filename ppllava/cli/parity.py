"""`ppllava parity record|check`: golden files that make numbers comparable across machines."""

from __future__ import annotations

import json

from ppllava.parity import harness

from . import options


def add_parser(sub) -> None:
    p = sub.add_parser("parity", help="record golden results, or check this device against them",
                       description="Backend parity. Inputs come from fixed seeds on the CPU, so they are the same "
                                   "on every machine; every op runs forward and backward on the chosen device and "
                                   "dtype. `record` writes a golden file; `check` compares against one and exits 1 "
                                   "if any tensor fails its dtype's tolerances.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    rec = actions.add_parser("record", help="run every case and write a golden file")
    rec.add_argument("--out", required=True, help="golden file to write (written atomically)")
    chk = actions.add_parser("check", help="run every case and compare with a golden file")
    chk.add_argument("--golden", required=True, help="golden file from `ppllava parity record`")
    chk.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    for q in (rec, chk):
        options.add_device(q)
        q.add_argument("--dtype", default=None,
                       help="comma-separated dtypes (default: record float32,bfloat16,float16; check all in the file)")
        q.add_argument("--case", action="append", help="only this case (repeatable); default all")
    rec.set_defaults(run=run_record)
    chk.set_defaults(run=run_check)


def _dtypes(args):
    return [d.strip() for d in args.dtype.split(",") if d.strip()] if args.dtype else None


def run_record(args) -> int:
    device = options.device(args)
    golden = harness.record(args.out, device, _dtypes(args) or harness.DEFAULT_DTYPES, harness.select_cases(args.case))
    meta = golden["meta"]
    counts = {d: sum(len(t) for t in cases.values()) for d, cases in golden["results"].items()}
    print(f"wrote {args.out}: {', '.join(f'{n} tensors in {d}' for d, n in counts.items())} "
          f"on {meta['device']} ({meta['device_name']}), implementations {meta['impls']}")
    return 0


def run_check(args) -> int:
    device = options.device(args)
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

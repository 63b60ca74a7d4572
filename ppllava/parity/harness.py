"""Record golden results on one machine, check another machine (or implementation) against them.

A golden file (safetensors with a JSON header, see goldfile.py) holds, per dtype, every case's output
and input grads as float32 CPU tensors, plus what produced them: device, device name, torch and
transformers versions, op implementations and numerics switches. Inputs are never stored: both sides
regenerate them from the case seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from backends.device import dtype_from_name, dtype_name

from . import goldfile
from .cases import CASES, Case, run_case
from .compare import Comparison, compare

FORMAT = goldfile.FORMAT
DEFAULT_DTYPES = ("float32", "bfloat16", "float16")


def select_cases(names: list[str] | None = None) -> list[Case]:
    if not names:
        return list(CASES)
    known = {c.name: c for c in CASES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown parity case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def pack_results(results: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """{dtype: {case: {tensor: t}}} -> (a header index, flat safetensors tensors)."""
    index, tensors = [], {}
    for dtype, cases in results.items():
        for case, named in cases.items():
            for tensor, value in named.items():
                key = f"{dtype}|{case}|{tensor}"
                index.append([dtype, case, tensor, key])
                tensors[key] = value
    return {"index": index}, tensors


def record(out: str | Path, device: torch.device, dtypes=DEFAULT_DTYPES, cases: list[Case] | None = None) -> dict:
    cases = cases or list(CASES)
    results = {}
    for name in dtypes:
        dtype = dtype_from_name(name)
        results[dtype_name(dtype)] = {case.name: run_case(case, device, dtype) for case in cases}
    meta = goldfile.provenance(device, list(results))
    header, tensors = pack_results(results)
    size = goldfile.write(out, {"kind": "ops", "meta": meta, **header}, tensors)
    return {"format": FORMAT, "meta": meta, "results": results, "bytes": size}


def load_golden(path: str | Path) -> dict:
    header, tensors = goldfile.read(path, kind="ops")
    results: dict = {}
    for dtype, case, tensor, key in header["index"]:
        results.setdefault(dtype, {}).setdefault(case, {})[tensor] = tensors[key]
    return {"format": FORMAT, "meta": header["meta"], "results": results}


@dataclass(frozen=True)
class Row:
    case: str
    tensor: str
    dtype: str
    comparison: Comparison


def check(golden: dict, device: torch.device, dtypes=None, cases: list[Case] | None = None) -> list[Row]:
    recorded = golden["results"]
    names = goldfile.chosen_dtypes(recorded, dtypes, "results")
    rows = []
    for name in names:
        dtype = dtype_from_name(name)
        for case in cases or list(CASES):
            if case.name not in recorded[name]:
                raise ValueError(f"golden file has no case {case.name!r} for {name}; re-record it with this version")
            expected = recorded[name][case.name]
            got = run_case(case, device, dtype)
            for tensor_name, value in expected.items():
                rows.append(Row(case.name, tensor_name, name, compare(got[tensor_name], value, dtype, case.rule)))
    return rows


def format_table(rows: list[Row]) -> str:
    header = ("case", "tensor", "dtype", "cosine", "max_abs", "max_rel", "mean_rel", "off_ratio", "result")
    body = [(r.case, r.tensor, r.dtype, f"{r.comparison.cosine:.6f}", f"{r.comparison.max_abs:.2e}",
             f"{r.comparison.max_rel:.2e}", f"{r.comparison.mean_rel:.2e}", f"{r.comparison.off_ratio:.2e}",
             "ok" if r.comparison.ok else "FAIL: " + "; ".join(r.comparison.failures)) for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

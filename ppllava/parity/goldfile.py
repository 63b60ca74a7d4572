"""Golden files: safetensors tensors plus one JSON header, no pickle.

    header = {"format": 2, "kind": "ops" | "model", "meta": provenance(...), ...}
    tensors = {key: tensor}

The header travels as the safetensors metadata field "ppllava_parity" (a JSON string), so a file can be
read without running any code from it. Format 1 files (torch.save pickles, before issue 22) are refused
with a message naming `ppllava parity convert`, which reads them with torch's weights-only unpickler.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import backends
from backends.device import device_facts, dtype_from_name, dtype_name

FORMAT = 2
HEADER_KEY = "ppllava_parity"


def provenance(device: torch.device, dtypes=(), **extra) -> dict:
    """What produced a golden file: the machine, the library versions, the op implementations, the switches."""
    import transformers

    facts = device_facts(device)
    return {
        "device": str(device),
        "device_name": facts.name,
        "machine": platform.machine(),
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
        "impls": {r.op: r.impl for r in backends.describe(device.type)},
        "numerics": {k: str(v) for k, v in facts.numerics.items()},
        "dtypes": list(dtypes),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def write(path: str | Path, header: dict, tensors: dict[str, torch.Tensor]) -> int:
    """Write atomically; returns the file's size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, **header}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={HEADER_KEY: json.dumps(header)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                   # mkstemp's 0600 is not what a golden file wants
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path.stat().st_size


def chosen_dtypes(recorded, dtypes, what: str) -> list[str]:
    """The dtype names to check: `dtypes` (any spelling) or all that were recorded; one missing is an error
    naming what to record."""
    names = [dtype_name(dtype_from_name(d)) for d in dtypes] if dtypes else list(recorded)
    missing = [n for n in names if n not in recorded]
    if missing:
        raise ValueError(f"golden file has no {', '.join(missing)} {what} (it holds {', '.join(recorded)}); "
                         f"record {'them' if what.endswith('s') else 'it'} with --dtype {','.join(missing)}")
    return names


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        start = f.read(4)
    return start[:2] == b"PK" or start[:1] == b"\x80"        # torch.save's zip, or a bare pickle


def read(path: str | Path, kind: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header, tensors) of a golden file; `kind` ("ops" or "model") refuses the other kind by name."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"golden file {path} is a folder; give the file `ppllava parity record --out` wrote")
    if not path.is_file():
        raise FileNotFoundError(f"golden file {path} does not exist (make one with `ppllava parity record --out {path}`)")
    if _is_pickle(path):
        raise ValueError(f"golden file {path} is an old pickle golden file (torch.save, format 1): convert it with "
                         f"`ppllava parity convert --golden {path} --out {path.with_suffix('.safetensors')}`, "
                         f"or record it again")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(metadata[HEADER_KEY])
    except Exception as e:
        raise ValueError(f"golden file {path} is not a parity golden file: {e.__class__.__name__}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"golden file {path} is not a parity golden file of format {FORMAT}")
    if kind is not None and header.get("kind") != kind:
        other = {"model": "a checkpoint's golden file (check it with --model DIR)",
                 "ops": "an op-case golden file (check it without --model)"}.get(header.get("kind"), "of another kind")
        raise ValueError(f"golden file {path} is {other}")
    return header, tensors


def convert_legacy(old: str | Path, out: str | Path) -> int:
    """A format-1 op-case golden file (torch.save) rewritten as format 2; returns the new file's size."""
    old = Path(old)
    if not old.is_file():
        raise FileNotFoundError(f"golden file {old} does not exist")
    try:   # the weights-only unpickler: tensors, dicts and strings only, never arbitrary objects
        golden = torch.load(old, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{old} is not an old parity golden file: {e.__class__.__name__}") from None
    if not isinstance(golden, dict) or golden.get("format") != 1:
        raise ValueError(f"{old} is not an old (format 1) parity golden file")
    from .harness import pack_results

    header, tensors = pack_results(golden["results"])
    meta = {**golden["meta"], "converted_from": f"{old.name} (format 1)"}
    return write(out, {"kind": "ops", "meta": meta, **header}, tensors)

"""`ppllava env`: the device, the library versions and which implementation each op will run."""

from __future__ import annotations

import importlib.metadata
import json
import platform

import torch

import backends
from backends.device import device_facts, dtype_name

from . import options

LIBRARIES = ("torch", "transformers", "triton", "torch_npu", "mindspeed", "deepspeed", "decord", "av", "open_clip_torch")


def add_parser(sub) -> None:
    p = sub.add_parser("env", help="show the device, library versions and op implementations",
                       description="Show the device PyTorch sees, its facts (collective backend, visible-devices "
                                   "variable, autocast dtypes, numerics switches), library versions, and which "
                                   "implementation of each custom op will run there.")
    options.add_device(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect(device: torch.device) -> dict:
    facts = device_facts(device)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: _version(name.replace("_", "-")) or _version(name) for name in LIBRARIES},
        "device": {
            "device": str(device), "type": facts.type, "name": facts.name, "count": facts.count,
            "dist_backend": facts.dist_backend, "visible_devices_env": facts.visible_devices_env,
            "visible_devices": facts.visible_devices,
            "autocast_dtypes": [dtype_name(d) for d in facts.autocast_dtypes],
            "numerics": {k: str(v) for k, v in facts.numerics.items()},
            "torch_threads": torch.get_num_threads(),
        },
        "ops": [{"op": r.op, "impl": r.impl, "source": r.source, "note": r.note}
                for r in backends.describe(device.type)],
    }


def run(args) -> int:
    info = collect(options.device(args))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"python {info['python']} on {info['platform']}")
    for name, version in info["libraries"].items():
        print(f"  {name:<16} {version or '-'}")
    d = info["device"]
    print(f"device {d['device']} ({d['name']}), {d['count']} visible"
          + (f" via {d['visible_devices_env']}={d['visible_devices'] or '(unset)'}" if d["visible_devices_env"] else ""))
    print(f"  distributed backend {d['dist_backend']}; autocast dtypes {', '.join(d['autocast_dtypes']) or '-'}; "
          f"{d['torch_threads']} CPU threads")
    print("  numerics: " + ", ".join(f"{k}={v}" for k, v in d["numerics"].items()))
    print("ops:")
    for op in info["ops"]:
        print(f"  {op['op']:<20} {op['impl']:<8} ({op['source']})" + (f"  {op['note']}" if op["note"] else ""))
    return 0

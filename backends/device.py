"""Device facts, from PyTorch's device-generic APIs.

Everything the rest of the project needs to know about the hardware lives here:
which device type is current, which collective backend and visible-devices
variable go with it, which autocast dtypes it supports, and which numerics
switches (TF32 / HF32) are in force. No other module branches on a device name.
"""

from __future__ import annotations

import importlib
import os
import platform
import warnings
from dataclasses import dataclass, field

import torch

# Device facts that no torch API reports. Data, not code paths.
_VISIBLE_DEVICES_ENV = {
    "cuda": "CUDA_VISIBLE_DEVICES",
    "npu": "ASCEND_RT_VISIBLE_DEVICES",
    "xpu": "ZE_AFFINITY_MASK",
}
_DIST_BACKEND_FALLBACK = {"npu": "hccl"}  # torch_npu registers this itself once imported
# Device types provided by an out-of-tree extension: (module to import, pip name).
_EXTENSIONS = {"npu": ("torch_npu", "torch-npu")}
# Numerics switches that change results on a device: label -> dotted attribute under torch.
_NUMERICS_SWITCHES = {
    "cuda": {
        "matmul.allow_tf32": "backends.cuda.matmul.allow_tf32",
        "cudnn.allow_tf32": "backends.cudnn.allow_tf32",
        "matmul.allow_bf16_reduced_precision_reduction": "backends.cuda.matmul.allow_bf16_reduced_precision_reduction",
    },
    "npu": {
        "matmul.allow_hf32": "npu.matmul.allow_hf32",
        "conv.allow_hf32": "npu.conv.allow_hf32",
    },
}
# Switches set explicitly when a device type is first resolved in a process, because the vendor's defaults
# differ from switch to switch (torch_npu: conv.allow_hf32 True, matmul.allow_hf32 False): float32 stays
# float32, so results compare with a golden file from the CPU or an A100. Code may change them afterwards;
# `ppllava env` and parity golden files record what is in force.
_NUMERICS_POLICY = {"npu": {"matmul.allow_hf32": False, "conv.allow_hf32": False}}
_policy_applied: set[str] = set()

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}


class DeviceUnavailable(RuntimeError):
    """The requested device cannot be used in this environment (message says why and what to do)."""


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(sorted(DTYPES))}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def current_device_type() -> str:
    """The accelerator PyTorch sees ('cuda', 'npu', ...), or 'cpu' when there is none."""
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator().type
    return "cpu"


def _load_extension(device_type: str) -> None:
    """Import the out-of-tree extension that provides `device_type` (e.g. torch_npu), lazily."""
    if device_type not in _EXTENSIONS or hasattr(torch, device_type):
        return
    module, pip_name = _EXTENSIONS[device_type]
    try:
        importlib.import_module(module)
    except Exception as e:  # ImportError, or OSError when the vendor toolkit (CANN) is missing
        raise DeviceUnavailable(
            f"device '{device_type}' needs the {module} package, which failed to import ({e.__class__.__name__}: {e}); "
            f"install {pip_name} at the version matching torch {torch.__version__.split('+')[0]} "
            f"and source the vendor toolkit's set_env.sh first (see README, 'Ascend NPU')"
        ) from None


def _apply_numerics_policy(device_type: str) -> None:
    """Set this device type's numerics switches to _NUMERICS_POLICY, once per process."""
    if device_type in _policy_applied or device_type not in _NUMERICS_POLICY:
        return
    for label, value in _NUMERICS_POLICY[device_type].items():
        owner, _, attr = _NUMERICS_SWITCHES[device_type][label].rpartition(".")
        target = _read_switch(owner)
        if target is not None and hasattr(target, attr):
            setattr(target, attr, value)
    _policy_applied.add(device_type)


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """'auto'/None -> the current accelerator or cpu; 'cuda', 'npu:1', ... checked to be usable.

    The first time a device type is resolved, its numerics switches are set to _NUMERICS_POLICY."""
    if name is None or str(name) == "auto":
        name = current_device_type()
    device_type = str(name).partition(":")[0]
    _load_extension(device_type)  # torch parses 'npu' only once torch_npu is imported
    _apply_numerics_policy(device_type)
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceUnavailable(f"unknown device {str(name)!r}; expected auto, cpu, cuda[:N] or npu[:N]") from None
    if device.type == "cpu":
        return device
    module = getattr(torch, device.type, None)
    if module is None or not module.is_available():
        raise DeviceUnavailable(
            f"device '{device}' is not available here (torch {torch.__version__} sees "
            f"{current_device_type()} as its device)"
        )
    if device.index is not None and device.index >= module.device_count():
        raise DeviceUnavailable(f"device '{device}' does not exist: {module.device_count()} visible")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device` (no-op on the CPU)."""
    if device.type != "cpu":
        torch.get_device_module(device.type).synchronize(device)


def _read_switch(dotted: str):
    obj = torch
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def numerics_switches(device_type: str) -> dict[str, object]:
    """Settings that change the numbers an op produces on this device type (recorded by parity runs)."""
    switches: dict[str, object] = {"float32_matmul_precision": torch.get_float32_matmul_precision()}
    for label, dotted in _NUMERICS_SWITCHES.get(device_type, {}).items():
        value = _read_switch(dotted)
        if value is not None:
            switches[label] = value
    return switches


def autocast_dtypes(device_type: str) -> tuple[torch.dtype, ...]:
    if not torch.amp.is_autocast_available(device_type):
        return ()
    module = torch.get_device_module(device_type)
    bf16 = getattr(module, "is_bf16_supported", lambda: True)()
    return (torch.bfloat16,) * bool(bf16) + (torch.float16,)


# torch's antialiased bicubic on uint8 (a port of Pillow's fixed-point kernel) exists for these only
_PILLOW_UINT8_RESIZE = frozenset({"cpu"})


def has_pillow_uint8_resize(device_type: str) -> bool:
    """Whether F.interpolate(uint8, mode="bicubic", antialias=True) runs Pillow's uint8 kernel here."""
    return device_type in _PILLOW_UINT8_RESIZE


def dist_backend(device_type: str) -> str:
    table = torch.distributed.Backend.default_device_backend_map if torch.distributed.is_available() else {}
    return table.get(device_type) or _DIST_BACKEND_FALLBACK.get(device_type, "gloo")


def device_name(device: torch.device) -> str:
    if device.type == "cpu":
        return platform.processor() or platform.machine()
    module = torch.get_device_module(device.type)
    get_name = getattr(module, "get_device_name", None)
    return get_name(device) if get_name else device.type


@dataclass(frozen=True)
class DeviceFacts:
    type: str
    count: int
    name: str
    dist_backend: str
    visible_devices_env: str | None
    visible_devices: str | None
    autocast_dtypes: tuple[torch.dtype, ...]
    numerics: dict[str, object] = field(default_factory=dict)


def device_facts(device: str | torch.device | None = None) -> DeviceFacts:
    dev = resolve_device(device)
    count = 1 if dev.type == "cpu" else torch.get_device_module(dev.type).device_count()
    env = _VISIBLE_DEVICES_ENV.get(dev.type)
    return DeviceFacts(
        type=dev.type,
        count=count,
        name=device_name(dev),
        dist_backend=dist_backend(dev.type),
        visible_devices_env=env,
        visible_devices=os.environ.get(env) if env else None,
        autocast_dtypes=autocast_dtypes(dev.type),
        numerics=numerics_switches(dev.type),
    )


def accelerator_rng_state(device: torch.device) -> torch.Tensor | None:
    """The random generator state of `device` (None for the CPU, whose state is torch.get_rng_state())."""
    if device.type == "cpu":
        return None
    return torch.get_device_module(device.type).get_rng_state(device)


def set_accelerator_rng_state(device: torch.device, state: torch.Tensor | None) -> None:
    if device.type != "cpu" and state is not None:
        torch.get_device_module(device.type).set_rng_state(state, device)


def set_current_device(device: torch.device) -> None:
    """Make `device` this process's current accelerator (no-op on the CPU)."""
    if device.type != "cpu":
        torch.accelerator.set_device_index(device.index or 0)


def local_device(device_type: str, local_rank: int) -> torch.device:
    """The device of the process with `local_rank` on its node: <type>:<local_rank>, or the CPU (no index)."""
    return resolve_device(device_type if device_type == "cpu" else f"{device_type}:{local_rank}")



# What a CPU process needs in its environment, from its start, for reruns to repeat bit for bit: MKL's
# conditional numerical reproducibility (its BLAS otherwise picks code paths by memory alignment). MKL reads
# it when it loads, so setting it inside a running process is too late for that process.
REPRODUCIBLE_ENV = {"MKL_CBWR": "AUTO"}


def reproducible_numerics() -> bool:
    """Turn on torch's deterministic algorithms for this process and put REPRODUCIBLE_ENV into the environment
    of the processes it starts; warn once if this process itself was started without it where MKL is the
    CPU BLAS (then two runs may differ in the last bits of a loss). On CUDA, deterministic cuBLAS needs
    CUBLAS_WORKSPACE_CONFIG=:4096:8 before CUDA starts (torch's error says so). Returns the previous torch
    setting, for torch.use_deterministic_algorithms to restore."""
    previous = torch.are_deterministic_algorithms_enabled()
    missing = [k for k in REPRODUCIBLE_ENV if k not in os.environ]
    if missing and torch.backends.mkl.is_available():
        warnings.warn(f"{', '.join(missing)} not set when this process started: CPU matmuls may differ in the last "
                      f"bits between reruns; start it with {' '.join(f'{k}={REPRODUCIBLE_ENV[k]}' for k in missing)}",
                      stacklevel=2)
    for key, value in REPRODUCIBLE_ENV.items():
        os.environ.setdefault(key, value)
    torch.use_deterministic_algorithms(True)
    return previous

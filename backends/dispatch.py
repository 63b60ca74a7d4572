"""Custom-op dispatch: one readable native spec per op, per-device implementations beside it.

The implementation is chosen once per device type and cached, never by branching on
every call. By default a tensor on device type ``D`` runs the implementation named
``D`` (``cpu``, ``cuda``, ``npu``) and falls back to ``native`` with a one-time
warning when there is none. The choice can be forced per op or for all ops:

* in code: ``backends.configure_ops("native")`` or ``configure_ops({"prompt_guided_pool": "cpu"})``
* by environment: ``PPLLAVA_OPS=native`` or ``PPLLAVA_OPS=relevance_map=native,prompt_guided_pool=npu``
  (the environment wins over code, so an operator can always force the spec).

An implementation is a function with the op's normalised signature; device
implementations are loaded lazily (a loader may raise ``ImplementationUnavailable``
when, say, triton is not installed). The resolved choice is logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

ENV_VAR = "PPLLAVA_OPS"
NATIVE = "native"
AUTO = "auto"
ALL_OPS = "*"

log = logging.getLogger("backends")


class ImplementationUnavailable(RuntimeError):
    """A registered implementation cannot be loaded here (missing dependency, say)."""


@dataclass(frozen=True)
class Resolution:
    op: str
    device_type: str
    impl: str
    source: str  # 'auto', 'config' or 'env:PPLLAVA_OPS'
    note: str = ""


@dataclass
class CustomOp:
    """An op with a native spec and named implementations, dispatched on the first tensor's device."""

    name: str
    check: Callable[..., tuple]  # validates and normalises the arguments into the impls' signature
    native: Callable
    loaders: dict[str, Callable[[], Callable]] = field(default_factory=dict)
    _cache: dict[str, tuple[Resolution, Callable]] = field(default_factory=dict, repr=False)

    def register(self, impl: str, loader: Callable[[], Callable]) -> None:
        """Register `loader`, which returns the implementation `impl` (imports happen inside it)."""
        if impl in (NATIVE, AUTO):
            raise ValueError(f"{impl!r} is reserved")
        self.loaders[impl] = loader
        self._cache.clear()

    @property
    def impl_names(self) -> list[str]:
        return [NATIVE, *self.loaders]

    def load(self, impl: str) -> Callable:
        if impl == NATIVE:
            return self.native
        if impl not in self.loaders:
            raise ImplementationUnavailable(f"{self.name} has no {impl!r} implementation")
        try:
            return self.loaders[impl]()
        except ImportError as e:
            raise ImplementationUnavailable(f"{self.name}[{impl}] cannot load: {e}") from None

    def resolve(self, device_type: str) -> tuple[Resolution, Callable]:
        if device_type not in self._cache:
            self._cache[device_type] = self._resolve(device_type)
            res = self._cache[device_type][0]
            log.info("%s on %s: %s implementation (%s)%s", res.op, device_type, res.impl, res.source,
                     f"; {res.note}" if res.note else "")
        return self._cache[device_type]

    def _resolve(self, device_type: str) -> tuple[Resolution, Callable]:
        requested, source = _requested_impl(self.name)
        if requested != AUTO:  # forced: fail loudly rather than run something else
            return Resolution(self.name, device_type, requested, source), self.load(requested)
        if device_type not in self.loaders:
            note = f"no {device_type!r} implementation registered"
            log.warning("%s: %s; falling back to native", self.name, note)
            return Resolution(self.name, device_type, NATIVE, source, note), self.native
        try:
            return Resolution(self.name, device_type, device_type, source), self.load(device_type)
        except ImplementationUnavailable as e:
            log.warning("%s; falling back to native", e)
            return Resolution(self.name, device_type, NATIVE, source, str(e)), self.native

    def __call__(self, *args, **kwargs):
        args = self.check(*args, **kwargs)
        _, fn = self.resolve(args[0].device.type)
        return fn(*args)


_REGISTRY: dict[str, CustomOp] = {}
_config: dict[str, str] = {}


def register_op(op: CustomOp) -> CustomOp:
    _REGISTRY[op.name] = op
    return op


def get_op(name: str) -> CustomOp:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def registered_ops() -> list[CustomOp]:
    return list(_REGISTRY.values())


def parse_ops_spec(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """'native' | 'op=impl,op2=impl2' | 'native,op=impl' | {'op': 'impl', '*': 'native'} -> checked dict."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        items: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            op, sep, impl = part.partition("=")
            items.update({op.strip(): impl.strip()} if sep else {ALL_OPS: op})
        spec = items
    checked = {}
    for op_name, impl in spec.items():
        valid = sorted({NATIVE, AUTO}.union(*(o.loaders for o in registered_ops()))) if op_name == ALL_OPS \
            else [AUTO, *get_op(op_name).impl_names]
        if impl not in valid:
            raise ValueError(f"unknown implementation {impl!r} for {op_name}; expected one of {', '.join(valid)}")
        checked[op_name] = impl
    return checked


def configure_ops(spec: str | Mapping[str, str] | None) -> None:
    """Set the implementation choice from code or a config file; None resets to auto."""
    global _config
    _config = parse_ops_spec(spec)
    for op in registered_ops():
        op._cache.clear()


def _requested_impl(op_name: str) -> tuple[str, str]:
    env = parse_ops_spec(os.environ.get(ENV_VAR) or None)
    for table, source in ((env, f"env:{ENV_VAR}"), (_config, "config")):
        for key in (op_name, ALL_OPS):
            if key in table and table[key] != AUTO:
                return table[key], source
    return AUTO, AUTO


def describe(device_type: str) -> list[Resolution]:
    """Which implementation each op will run on `device_type` (resolves and caches)."""
    return [op.resolve(device_type)[0] for op in registered_ops()]


def reset_cache() -> None:
    """Forget resolved choices (after changing PPLLAVA_OPS in-process)."""
    for op in registered_ops():
        op._cache.clear()

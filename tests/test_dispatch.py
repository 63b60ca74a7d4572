import importlib.util
import logging

import pytest
import torch

import backends
from backends.dispatch import CustomOp, ImplementationUnavailable, parse_ops_spec
from ppllava.parity import CASES, compare, run_case


def _toy_op():
    """An op whose implementations give different answers, so a test can see which one ran."""
    op = CustomOp("toy", check=lambda t: (t,), native=lambda t: t + 1)
    op.register("cpu", lambda: (lambda t: t + 2))
    return op


def test_auto_picks_the_device_implementation_once():
    op = _toy_op()
    assert op(torch.zeros(1)).item() == 2
    calls = []
    op.loaders["cpu"] = lambda: calls.append(1) or (lambda t: t + 2)
    op._cache.clear()
    for _ in range(3):
        op(torch.zeros(1))
    assert calls == [1]  # resolved once per device type, not per call


def test_missing_implementation_falls_back_to_native_with_one_warning(caplog):
    op = _toy_op()
    with caplog.at_level(logging.WARNING, logger="backends"):
        first, fn = op.resolve("npu")
        op.resolve("npu")
    assert first.impl == "native" and fn(torch.zeros(1)).item() == 1
    assert len([r for r in caplog.records if "no 'npu' implementation" in r.getMessage()]) == 1


def test_unloadable_implementation_falls_back_under_auto_but_raises_when_forced(monkeypatch):
    op = CustomOp("toy2", check=lambda t: (t,), native=lambda t: t + 1)

    def broken():
        raise ImportError("No module named 'triton'")

    op.register("cpu", broken)
    assert op(torch.zeros(1)).item() == 1
    backends.dispatch._REGISTRY["toy2"] = op
    try:
        monkeypatch.setenv("PPLLAVA_OPS", "toy2=cpu")
        op._cache.clear()
        with pytest.raises(ImplementationUnavailable, match="triton"):
            op(torch.zeros(1))
    finally:
        del backends.dispatch._REGISTRY["toy2"]


def test_config_and_environment_force_implementations(monkeypatch):
    assert {r.op: r.impl for r in backends.describe("cpu")} == {"relevance_map": "cpu", "prompt_guided_pool": "cpu"}
    backends.configure_ops("native")
    assert {r.impl for r in backends.describe("cpu")} == {"native"}
    backends.configure_ops({"prompt_guided_pool": "native"})
    assert {r.op: (r.impl, r.source) for r in backends.describe("cpu")} == {
        "relevance_map": ("cpu", "auto"), "prompt_guided_pool": ("native", "config")}
    monkeypatch.setenv("PPLLAVA_OPS", "native,prompt_guided_pool=cpu")  # the environment wins over config
    backends.dispatch.reset_cache()
    assert {r.op: (r.impl, r.source) for r in backends.describe("cpu")} == {
        "relevance_map": ("native", "env:PPLLAVA_OPS"), "prompt_guided_pool": ("cpu", "env:PPLLAVA_OPS")}


@pytest.mark.parametrize("spec,match", [
    ("nope", "unknown implementation 'nope'"),
    ("prompt_guided_pool=tpu", r"unknown implementation 'tpu' for prompt_guided_pool; expected one of auto, native, cpu"),
    ("pooling=native", "unknown op 'pooling'"),
])
def test_bad_specs_are_rejected(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_ops_spec(spec)


# every implementation registered, and which must load on this machine: native, cpu and npu are plain torch (npu
# runs on CPU tensors, the code an Ascend NPU runs), cuda is the Triton kernels, run in Triton's interpreter on
# CPU tensors without a GPU (conftest sets TRITON_INTERPRET=1) and needing triton installed
EXPECTED_IMPLS = ["native", "cpu", "cuda", "npu"]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def test_both_ops_register_every_implementation():
    assert {op.name: op.impl_names for op in backends.registered_ops()} == {
        "relevance_map": EXPECTED_IMPLS, "prompt_guided_pool": EXPECTED_IMPLS}


@pytest.mark.parametrize("op_name", ["relevance_map", "prompt_guided_pool"])
@pytest.mark.parametrize("impl", EXPECTED_IMPLS[1:])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_implementation_loads_here_and_matches_native(op_name, impl, dtype):
    if impl == "cuda" and not HAS_TRITON:
        pytest.skip("triton is not installed (the cuda and dev extras bring it)")
    op = backends.get_op(op_name)
    fn = op.load(impl)                   # ImplementationUnavailable fails the test: nothing here may be missing
    assert callable(fn) and fn is not op.native       # its own code, not the spec under another name
    device = torch.device(backends.current_device_type())
    cases = [c for c in CASES if op_name in c.name]
    backends.configure_ops("native")
    expected = {c.name: run_case(c, device, dtype) for c in cases}
    backends.configure_ops({op_name: impl})
    assert op.resolve(device.type)[0].impl == impl
    for case in cases:
        got = run_case(case, device, dtype)
        for tensor, value in expected[case.name].items():
            result = compare(got[tensor], value, dtype)
            assert result.ok, f"{case.name} {tensor}: {result.failures}"

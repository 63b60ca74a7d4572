"""The cuda (Triton) implementations of both ops against the native spec: forward and backward, float32,
bfloat16 and float16, small shapes. Without a GPU they run on CPU tensors in Triton's interpreter
(conftest sets TRITON_INTERPRET=1); with one, on the GPU.

Skipped where triton is not installed, except the check that `backends` and `ppllava` import and fall
back to native without it.
"""

import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import backends
from backends.ops import pooling, relevance, triton_support

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Relative to the largest value of the expected tensor. The interpreter rounds float32 -> bfloat16 toward
# zero (the GPU rounds to nearest), hence one more bfloat16 step than the spec's own rounding.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2**-9, torch.bfloat16: 2**-6}
DTYPES = list(TOLERANCE)


@pytest.fixture(scope="module")
def kernels():
    pytest.importorskip("triton")
    if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    from backends.ops.pooling_triton import pool_triton
    from backends.ops.relevance_triton import relevance_triton
    return SimpleNamespace(pool=pool_triton, relevance=relevance_triton)


def _on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


def assert_close(actual, expected, dtype, what):
    assert actual.dtype == expected.dtype, what
    tol = TOLERANCE[dtype]
    scale = expected.float().abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def _forward_and_grads(fn, inputs, args):
    out = fn(*inputs, *args)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return out, torch.autograd.grad(out, wanted, grad_out)


POOL_CASES = [  # (B, T, H, W, D), kernel, stride
    ((2, 4, 6, 6, 40), (2, 3, 3), (2, 3, 3)),   # windows tile the input exactly; D not a power of 2
    ((1, 5, 7, 8, 300), (2, 3, 3), (2, 3, 3)),  # leftovers dropped on every axis; D spans two blocks
    ((2, 3, 8, 8, 16), (1, 2, 2), (1, 3, 3)),   # gaps between windows (stride > kernel)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,kernel,stride", POOL_CASES, ids=str)
def test_pool_matches_native_forward_and_backward(kernels, shape, kernel, stride, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(DEVICE, dtype).requires_grad_()
    s = (torch.rand(shape[:4], generator=gen) * 0.05).to(DEVICE, dtype).requires_grad_()  # logits / 0.01 span ~5
    args = (kernel, stride, 0.01)
    got, got_grads = _forward_and_grads(kernels.pool, (x, s), args)
    want, want_grads = _forward_and_grads(pooling.pool_native, (x, s), args)
    assert got.shape == want.shape
    for name, a, b in zip(("out", "grad_x", "grad_relevance"), (got, *got_grads), (want, *want_grads)):
        assert_close(a, b, dtype, name)


def test_pool_backward_to_x_alone_and_to_relevance_alone(kernels):
    gen = torch.Generator().manual_seed(0)
    x, s = _on_device(torch.randn(1, 4, 6, 6, 24, generator=gen), torch.rand(1, 4, 6, 6, generator=gen) * 0.05)
    for needs in ((True, False), (False, True)):
        inputs = [t.detach().requires_grad_(n) for t, n in zip((x, s), needs)]
        _, got = _forward_and_grads(kernels.pool, inputs, ((2, 3, 3), (2, 3, 3), 0.01))
        _, want = _forward_and_grads(pooling.pool_native, inputs, ((2, 3, 3), (2, 3, 3), 0.01))
        assert_close(got[0], want[0], torch.float32, f"grad of {'x' if needs[0] else 'relevance'}")


RELEVANCE_CASES = [  # (B, T, H, W, C), masked
    ((2, 3, 4, 5, 24), False),
    ((2, 4, 3, 3, 300), True),  # C spans two blocks; positions leave a partial block
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,masked", RELEVANCE_CASES, ids=str)
def test_relevance_matches_native_forward_and_backward(kernels, shape, masked, dtype):
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(shape, generator=gen).to(DEVICE, dtype).requires_grad_()
    text = torch.randn(shape[0], shape[-1], generator=gen).to(DEVICE, dtype).requires_grad_()
    mask = None
    if masked:
        mask = torch.ones(shape[:2], dtype=torch.bool, device=DEVICE)
        mask[0, -1] = mask[1, 0] = False
    got, got_grads = _forward_and_grads(kernels.relevance, (video, text), (100.0, mask))
    want, want_grads = _forward_and_grads(relevance.relevance_native, (video, text), (100.0, mask))
    for name, a, b in zip(("relevance", "grad_video", "grad_text"), (got, *got_grads), (want, *want_grads)):
        assert_close(a, b, dtype, name)
    if masked:
        assert (got[~mask] == 0).all()


def test_relevance_gradient_reaches_a_tensor_logit_scale(kernels):
    gen = torch.Generator().manual_seed(0)
    video, text = _on_device(torch.randn(1, 2, 3, 3, 16, generator=gen), torch.randn(1, 16, generator=gen))
    scale = torch.tensor(30.0, device=DEVICE, requires_grad=True)
    _, got = _forward_and_grads(kernels.relevance, (video, text, scale), (None,))
    _, want = _forward_and_grads(relevance.relevance_native, (video, text, scale), (None,))
    assert_close(got[0], want[0], torch.float32, "grad_logit_scale")


def test_unsupported_cases_run_native_and_say_so_once(kernels, caplog, monkeypatch):
    monkeypatch.setattr(triton_support, "_noted", set())
    gen = torch.Generator().manual_seed(0)
    x, s = _on_device(torch.randn(1, 4, 6, 6, 8, generator=gen), torch.rand(1, 4, 6, 6, generator=gen))
    calls = [
        (kernels.pool, pooling.pool_native, (x, s, (2, 3, 3), (1, 2, 2), 0.01), "overlapping windows"),
        (kernels.pool, pooling.pool_native, (x.double(), s.double(), (2, 3, 3), (2, 3, 3), 0.01), "x is float64"),
        (kernels.relevance, relevance.relevance_native, (x.double(), x[:, 0, 0, 0].double(), 100.0, None),
         "video_embeds is float64"),
    ]
    with caplog.at_level(logging.WARNING, logger="backends"):
        for fn, native, args, _ in calls * 2:
            torch.testing.assert_close(fn(*args), native(*args), rtol=0, atol=0)
    for *_, reason in calls:
        assert len([r for r in caplog.records if reason in r.getMessage()]) == 1, reason


def test_dispatch_loads_the_kernels_when_they_can_run(kernels, monkeypatch):
    assert backends.get_op("prompt_guided_pool").load("cuda").__name__ == "pool_triton"  # interpreting
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(backends.ImplementationUnavailable, match="no CUDA device"):
        backends.get_op("relevance_map").load("cuda")


WITHOUT_TRITON = """
import logging, sys
sys.modules["triton"] = None  # import triton now raises ImportError, as where it is not installed
import backends, ppllava
from backends import get_op, ImplementationUnavailable
logging.basicConfig(level=logging.WARNING)
for name in ("relevance_map", "prompt_guided_pool"):
    try:
        get_op(name).load("cuda")
        raise SystemExit(name + ": the cuda implementation loaded without triton")
    except ImplementationUnavailable as e:
        assert "triton" in str(e), e
    assert get_op(name).resolve("cuda")[0].impl == "native"
print("ok")
"""


def test_backends_and_ppllava_import_and_fall_back_without_triton():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PPLLAVA_OPS")}
    done = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert "falling back to native" in done.stderr

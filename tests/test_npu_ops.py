"""The npu implementations of both ops, run on CPU tensors: the same code path an Ascend NPU runs.

They are plain torch ops, so everything but torch_npu itself is checked here: against the native spec
(forward and backward, float32 and bfloat16), against the loop oracles in float64, through the parity
tolerances, and for the ops Atlas A2 lacks (avg_pool3d, unfold, float64), which they must never call.
"""

import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import backends
from backends.ops.pooling import pool_native
from backends.ops.pooling_npu import pool_npu
from backends.ops.relevance import relevance_native
from backends.ops.relevance_npu import relevance_npu
from oracles import pool_loop, relevance_loop
from ppllava.cli import main
from ppllava.parity import CASES, check, record

# (kernel, stride, (T, H, W)): the paper's video and image kernels tiling exactly, with leftovers,
# overlapping windows, gaps between windows, and a kernel of one position
SHAPES = [
    ((2, 3, 3), None, (4, 6, 6)),
    ((1, 3, 3), None, (2, 9, 9)),
    ((2, 3, 3), None, (5, 7, 8)),
    ((2, 3, 3), (1, 2, 2), (4, 7, 6)),
    ((2, 2, 2), (3, 3, 3), (5, 7, 8)),
    ((1, 1, 1), None, (2, 3, 3)),
]
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.bfloat16: {"rtol": 2**-7, "atol": 1e-5}}
RELATIVE_GRAD_ATOL = {torch.float32: 2e-5, torch.bfloat16: 2**-7}   # of the gradient's largest element


def _grads(fn, *tensors, cotangent_seed=7):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(cotangent_seed)).to(out.dtype)
    out.backward(cotangent)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel,stride,size", SHAPES)
def test_pool_matches_native_forward_and_backward(kernel, stride, size, dtype):
    gen = torch.Generator().manual_seed(sum(size))
    x = torch.randn(2, *size, 16, generator=gen).to(dtype)
    relevance = (torch.rand(2, *size, generator=gen) * 0.05).to(dtype)
    stride = stride or kernel
    args = (kernel, stride, 0.01)
    out, grads = _grads(lambda x, s: pool_npu(x, s, *args), x, relevance)
    ref, ref_grads = _grads(lambda x, s: pool_native(x, s, *args), x, relevance)
    assert out.dtype == dtype and [g.dtype for g in grads] == [dtype, dtype]
    torch.testing.assert_close(out, ref, **TOLERANCE[dtype])
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("kernel,stride,size", SHAPES)
def test_pool_matches_the_loop_oracle_and_gradcheck_in_float64(kernel, stride, size):
    gen = torch.Generator().manual_seed(1)
    stride = stride or kernel
    x = torch.randn(1, *size, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    relevance = (torch.rand(1, *size, generator=gen, dtype=torch.float64) * 0.1).requires_grad_()
    torch.testing.assert_close(pool_npu(x, relevance, kernel, stride, 0.05),
                               pool_loop(x.detach(), relevance.detach(), kernel, stride, 0.05), rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, s: pool_npu(x, s, kernel, stride, 0.05), (x, relevance))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_relevance_matches_native_forward_and_backward(dtype, masked):
    """The gradients pass through a softmax of 100 x cos: float32 rounding reaches about 4e-6 of a gradient's
    largest element in both implementations (measured on a Xeon and an EPYC), which no element-wise 1e-6 can
    hold on every CPU. So each is held to the float64 result, and npu to no worse than twice native's error."""
    gen = torch.Generator().manual_seed(2)
    video = torch.randn(2, 4, 5, 5, 32, generator=gen).to(dtype)
    text = torch.randn(2, 32, generator=gen).to(dtype)
    mask = torch.tensor([[True, True, True, False], [True] * 4]) if masked else None
    out, grads = _grads(lambda v, t: relevance_npu(v, t, 100.0, mask), video, text)
    ref, ref_grads = _grads(lambda v, t: relevance_native(v, t, 100.0, mask), video, text)
    exact, exact_grads = _grads(lambda v, t: relevance_native(v, t, 100.0, mask), video.double(), text.double())
    assert out.dtype == dtype and (not masked or (out[0, 3] == 0).all())
    torch.testing.assert_close(out, ref, **TOLERANCE[dtype])
    for got, expected, truth in zip(grads, ref_grads, exact_grads):
        scale = float(truth.abs().max())
        torch.testing.assert_close(got, expected, rtol=TOLERANCE[dtype]["rtol"],
                                   atol=max(TOLERANCE[dtype]["atol"], RELATIVE_GRAD_ATOL[dtype] * scale))
        if dtype == torch.float32:
            npu_error, native_error = (float((g.double() - truth).abs().max()) for g in (got, expected))
            assert npu_error <= 2 * native_error + 1e-7 * scale, (npu_error, native_error)


def test_relevance_matches_the_loop_oracle_in_float64():
    gen = torch.Generator().manual_seed(3)
    video = torch.randn(2, 3, 4, 4, 8, generator=gen, dtype=torch.float64)
    text = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    torch.testing.assert_close(relevance_npu(video, text, 30.0, mask), relevance_loop(video, text, 30.0, mask),
                               rtol=1e-10, atol=1e-14)


class _AtenLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.dtypes = set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(func.overloadpacket.__name__)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
        return out


UNSUPPORTED_ON_910B = {"avg_pool3d", "adaptive_avg_pool3d", "unfold", "unfold_backward", "im2col", "col2im"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stride", [None, (1, 2, 2)])
def test_npu_formulation_avoids_what_atlas_a2_lacks(dtype, stride):
    gen = torch.Generator().manual_seed(4)
    video = torch.randn(1, 4, 6, 6, 16, generator=gen).to(dtype).requires_grad_()
    text = torch.randn(1, 16, generator=gen).to(dtype).requires_grad_()
    x = torch.randn(1, 4, 6, 6, 8, generator=gen).to(dtype).requires_grad_()
    log = _AtenLog()
    with log:
        relevance = relevance_npu(video, text, 100.0, torch.tensor([[True, True, True, False]]))
        pool_npu(x, relevance, (2, 3, 3), stride or (2, 3, 3), 0.01).float().sum().backward()
    assert "bmm" in log.ops and "_softmax" in log.ops
    assert not log.ops & UNSUPPORTED_ON_910B, log.ops & UNSUPPORTED_ON_910B
    assert torch.float64 not in log.dtypes


def test_the_native_spec_would_be_caught_by_that_check():
    x, relevance = torch.randn(1, 4, 6, 6, 8, requires_grad=True), torch.rand(1, 4, 6, 6)
    log = _AtenLog()
    with log:
        pool_native(x, relevance, (2, 3, 3), (2, 3, 3), 0.01).sum().backward()
    assert log.ops & UNSUPPORTED_ON_910B == {"unfold", "unfold_backward"}


OP_CASES = [c for c in CASES if c.rule == "op"]  # every op case: masks, leftovers, overlapping windows, the chain
# float16 leaves out the chain: there S is rounded to float16 and then divided by the temperature (0.01), so
# the text gradient of the native spec itself is 1e-3 (mean relative) from the exact one; any implementation
# that is not bit-identical to it fails that row (the npu one is as close to exact: 7.8e-4)
FP16_CASES = [c for c in OP_CASES if c.name != "relevance_map->prompt_guided_pool"]


def test_npu_implementations_pass_parity_against_a_native_golden(tmp_path):
    backends.configure_ops("native")
    golden = record(tmp_path / "golden.pt", torch.device("cpu"), ("float32", "bfloat16", "float16"), OP_CASES)
    backends.configure_ops("npu")  # forced: the npu implementations run on the CPU tensors
    assert {r.impl for r in backends.describe("cpu")} == {"npu"}
    rows = check(golden, torch.device("cpu"), ("float32", "bfloat16"), OP_CASES)
    rows += check(golden, torch.device("cpu"), ("float16",), FP16_CASES)
    assert len(rows) == sum(len(c.differentiable) + 1 for c in OP_CASES) * 2 + \
        sum(len(c.differentiable) + 1 for c in FP16_CASES)
    assert all(r.comparison.ok for r in rows), [r for r in rows if not r.comparison.ok]


def test_nothing_imports_torch_npu_while_the_npu_formulation_runs_on_the_cpu():
    code = (
        "import sys, torch, backends\n"
        "from ppllava.model import build_model, load_config\n"
        "from backends import llm_kernels\n"
        "backends.configure_ops('npu')\n"
        "S = backends.relevance_map(torch.randn(1, 2, 3, 3, 4), torch.randn(1, 4), 100.0)\n"
        "backends.prompt_guided_pool(torch.randn(1, 2, 3, 3, 5), S)\n"
        "llm_kernels.load('rms_norm', 'native')\n"
        "build_model(load_config('tiny'), seed=0)\n"
        "print('torch_npu' in sys.modules)\n"
    )
    env = dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.skipif("torch_npu" in sys.modules, reason="torch_npu is installed")
@pytest.mark.parametrize("argv", [
    ["parity", "check", "--device", "npu", "--golden", "golden-from-a100.pt"],
    ["bench", "ops", "--device", "npu", "--json"],
    ["env", "--device", "npu:1"],
])
def test_selecting_npu_without_torch_npu_is_one_line_naming_the_fix(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ppllava {argv[0]}: error: device 'npu' needs the torch_npu package")
    assert "install torch-npu at the version matching torch" in err[0] and "set_env.sh" in err[0]

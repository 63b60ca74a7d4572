import random

import pytest
import torch
import torch.nn.functional as F

import backends
from oracles import pool_loop


def avg_pool(x, kernel, stride):
    return F.avg_pool3d(x.permute(0, 4, 1, 2, 3), kernel, stride).permute(0, 2, 3, 4, 1)


@pytest.mark.parametrize("kernel,stride", [((2, 3, 3), None), ((1, 3, 3), None), ((2, 3, 3), (1, 2, 2)), ((2, 2, 2), (3, 3, 3))])
def test_uniform_relevance_is_avg_pool3d(pool_impl, kernel, stride):
    x = torch.randn(2, 7, 10, 11, 16)
    out = backends.prompt_guided_pool(x, torch.full(x.shape[:4], 0.3), kernel, stride)
    torch.testing.assert_close(out, avg_pool(x, kernel, stride or kernel), rtol=1e-6, atol=1e-6)


def test_zero_temperature_picks_the_most_relevant_token(pool_impl):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 6, 6, 8, generator=gen)
    relevance = torch.randperm(4 * 6 * 6, generator=gen).float().view(1, 4, 6, 6) / 100  # distinct, >= 0.01 apart
    out = backends.prompt_guided_pool(x, relevance, (2, 3, 3), temperature=1e-4)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                window = relevance[0, 2 * i:2 * i + 2, 3 * j:3 * j + 3, 3 * k:3 * k + 3]
                a, c, e = torch.unravel_index(window.argmax(), window.shape)
                torch.testing.assert_close(out[0, i, j, k], x[0, 2 * i + a, 3 * j + c, 3 * k + e])


def _random_configs(n=8, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        kernel = tuple(rng.randint(1, 3) for _ in range(3))
        stride = tuple(rng.randint(1, 4) for _ in range(3))  # overlapping, exact and gapped windows
        size = tuple(k + rng.randint(0, 4) for k in kernel)  # leftovers likely
        yield kernel, stride, size, rng.choice([0.01, 0.1, 1.0])


@pytest.mark.parametrize("kernel,stride,size,temperature", list(_random_configs()))
def test_matches_loop_oracle(pool_impl, kernel, stride, size, temperature):
    gen = torch.Generator().manual_seed(hash((kernel, stride, size)) % 2**31)
    x = torch.randn(2, *size, 5, generator=gen, dtype=torch.float64)
    relevance = torch.rand(2, *size, generator=gen, dtype=torch.float64) * 0.05
    out = backends.prompt_guided_pool(x, relevance, kernel, stride, temperature)
    torch.testing.assert_close(out, pool_loop(x, relevance, kernel, stride, temperature), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel,stride", [((2, 3, 3), None), ((2, 3, 3), (1, 2, 2)), ((1, 2, 2), (2, 3, 3))])
def test_gradcheck(pool_impl, kernel, stride):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    relevance = (torch.rand(2, 4, 7, 6, generator=gen, dtype=torch.float64) * 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, s: backends.prompt_guided_pool(x, s, kernel, stride, 0.05), (x, relevance))


@pytest.mark.parametrize("size,kernel,expected", [
    ((32, 24, 24), (2, 3, 3), (16, 8, 8)),   # paper video: 18432 -> 1024 tokens
    ((1, 24, 24), (1, 3, 3), (1, 8, 8)),     # image: 576 -> 64
    ((1, 27, 27), (1, 3, 3), (1, 9, 9)),     # SigLIP 27x27 -> 9x9
])
def test_paper_token_counts(pool_impl, size, kernel, expected):
    x = torch.randn(1, *size, 2)
    out = backends.prompt_guided_pool(x, torch.rand(1, *size), kernel)
    assert tuple(out.shape[1:4]) == expected == backends.output_size(size, kernel, kernel)


def test_bfloat16_accumulates_in_float32(pool_impl):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 12, 12, 64, generator=gen).bfloat16()
    relevance = torch.rand(1, 8, 12, 12, generator=gen).bfloat16() * 0.05
    out = backends.prompt_guided_pool(x, relevance)
    assert out.dtype == torch.bfloat16
    exact = pool_loop(x.double(), relevance.double(), (2, 3, 3), (2, 3, 3), 0.01)
    # only the final rounding to bfloat16 may differ: half an ulp, 2^-9 relative
    assert ((out.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()


def test_bfloat16_gradients_have_input_dtypes(pool_impl):
    x = torch.randn(1, 4, 6, 6, 8, dtype=torch.bfloat16, requires_grad=True)
    relevance = torch.rand(1, 4, 6, 6, requires_grad=True)
    backends.prompt_guided_pool(x, relevance).float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and relevance.grad.dtype == torch.float32


def _allocated_bytes(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())


def test_cpu_forward_never_copies_the_windows():
    x = torch.randn(1, 8, 12, 12, 256)
    relevance = torch.rand(1, 8, 12, 12)
    native = backends.get_op("prompt_guided_pool").load("native")
    cpu = backends.get_op("prompt_guided_pool").load("cpu")
    x_bytes = x.numel() * x.element_size()
    # the measurement sees a window copy where there is one ...
    assert _allocated_bytes(lambda: native(x, relevance, (2, 3, 3), (2, 3, 3), 0.01)) >= x_bytes
    # ... and the CPU implementation allocates little more than its output (x / 18)
    assert _allocated_bytes(lambda: cpu(x, relevance, (2, 3, 3), (2, 3, 3), 0.01)) < x_bytes / 8

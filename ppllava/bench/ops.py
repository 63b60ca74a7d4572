"""`ppllava bench ops`: forward and forward+backward time of every implementation of both ops.

Pooling is timed beside three references on the same (B, T, H, W, D) channels-last tensor:
  unfold      the original code's formulation (copies every window, then a weighted sum)
  avg_pool3d  torch.nn.functional.avg_pool3d, the cost of plain pooling
  read_x      x.sum(), one read of x: the floor that memory bandwidth sets (forward only)
Forward rows also give the bytes each op must move (x read once, output written) per second, and the
ratios give that as a fraction of the device's peak bandwidth where the device reports it.
"""

from __future__ import annotations

import torch

import backends
from backends.device import device_facts, dtype_name
from backends.ops import pooling

from .bandwidth import GBps, peak_memory_GBps, pool_bytes, relevance_bytes
from .timing import time_ms


def pool_unfold(x, relevance, kernel, temperature=0.01):
    """The original implementation's formulation: unfold, copy the windows, weight, sum."""
    w = pooling.window_weights(relevance, kernel, kernel, temperature)
    xw = pooling.windows(x, kernel, kernel).flatten(-3)  # reshape copies every window
    return (xw * w[..., None, :].to(x.dtype)).sum(-1)


def _impls(op_name: str, device: torch.device) -> list[str]:
    """native, then the device's own implementation where it is registered and loads here."""
    op = backends.get_op(op_name)
    try:
        op.load(device.type)
    except backends.ImplementationUnavailable:
        return ["native"]
    return ["native", device.type]


def _fwd_bwd(fn, tensors, device, repeats):
    """Time fn(*tensors) forward alone and forward + backward with a fixed cotangent."""
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in tensors]
    with torch.no_grad():
        fwd = time_ms(lambda: fn(*[t.detach() for t in leaves]), device, repeats)
    cotangent = torch.ones_like(fn(*[t.detach() for t in leaves]))

    def step():
        fn(*leaves).backward(cotangent)
        for t in leaves:
            t.grad = None

    return {"fwd_ms": fwd, "fwd_bwd_ms": time_ms(step, device, repeats)}


def _reference(fn, tensors, device, repeats):
    """A reference the device or dtype may not support (avg_pool3d has no CPU bf16 or 910B kernel)."""
    try:
        return _fwd_bwd(fn, tensors, device, repeats)
    except (NotImplementedError, RuntimeError) as e:
        return {"unsupported": str(e).splitlines()[0]}


def _with_bandwidth(row: dict, nbytes: int) -> dict:
    return {**row, "fwd_GBps": GBps(nbytes, row["fwd_ms"])} if "fwd_ms" in row else row


def bench_ops(device: torch.device, dtype: torch.dtype, frames=32, size=24, relevance_dim=1024,
              pool_dims=(1024, 4096), kernel=(2, 3, 3), repeats=5, batch=1, progress=None) -> dict:
    gen = torch.Generator().manual_seed(0)
    shape = (batch, frames, size, size)
    peak = peak_memory_GBps(device)
    report = {
        "device": str(device), "device_name": device_facts(device).name, "dtype": dtype_name(dtype),
        "torch": str(torch.__version__), "threads": torch.get_num_threads(), "peak_memory_GBps": peak,
        "shape": {"B": batch, "T": frames, "H": size, "W": size, "kernel": list(kernel)},
        "ops": {"relevance_map": {}, "prompt_guided_pool": {}}, "ratios": {},
    }
    step = progress or (lambda label: None)

    video = torch.randn(*shape, relevance_dim, generator=gen).to(device, dtype)
    text = torch.randn(batch, relevance_dim, generator=gen).to(device, dtype)
    relevance_rows = report["ops"]["relevance_map"][f"C={relevance_dim}"] = {}
    for impl in _impls("relevance_map", device):
        step(f"relevance_map C={relevance_dim} [{impl}]")
        fn = backends.get_op("relevance_map").load(impl)
        relevance_rows[impl] = _with_bandwidth(
            _fwd_bwd(lambda v, t: fn(v, t, 100.0, None), (video, text), device, repeats), relevance_bytes(video))
    relevance = backends.relevance_map(video, text, 100.0).float()

    for dim in pool_dims:
        x = torch.randn(*shape, dim, generator=gen).to(device, dtype)
        rows = report["ops"]["prompt_guided_pool"][f"D={dim}"] = {}
        for impl in _impls("prompt_guided_pool", device):
            step(f"prompt_guided_pool D={dim} [{impl}]")
            fn = backends.get_op("prompt_guided_pool").load(impl)
            rows[impl] = _with_bandwidth(
                _fwd_bwd(lambda x, s: fn(x, s, kernel, kernel, 0.01), (x, relevance), device, repeats),
                pool_bytes(x, kernel, kernel))
        step(f"prompt_guided_pool D={dim} [references]")
        rows["unfold"] = _fwd_bwd(lambda x, s: pool_unfold(x, s, kernel), (x, relevance), device, repeats)
        rows["avg_pool3d"] = _reference(
            lambda x: torch.nn.functional.avg_pool3d(x.permute(0, 4, 1, 2, 3), kernel), (x,), device, repeats)
        with torch.no_grad():
            rows["read_x"] = {"fwd_ms": time_ms(lambda: x.sum(), device, repeats)}
        rows["read_x"] = _with_bandwidth(rows["read_x"], x.numel() * x.element_size())
        impl = _impls("prompt_guided_pool", device)[-1]
        best = rows[impl]
        report["ratios"][f"prompt_guided_pool D={dim}"] = {
            "implementation": impl,
            "unfold_over_impl_fwd": rows["unfold"]["fwd_ms"] / best["fwd_ms"],
            "unfold_over_impl_fwd_bwd": rows["unfold"]["fwd_bwd_ms"] / best["fwd_bwd_ms"],
            "avg_pool3d_over_impl_fwd": rows["avg_pool3d"]["fwd_ms"] / best["fwd_ms"] if "fwd_ms" in rows["avg_pool3d"] else None,
            "impl_over_read_x_fwd": best["fwd_ms"] / rows["read_x"]["fwd_ms"],
            "native_over_impl_fwd": rows["native"]["fwd_ms"] / best["fwd_ms"],
            "native_over_impl_fwd_bwd": rows["native"]["fwd_bwd_ms"] / best["fwd_bwd_ms"],
            "impl_fwd_GBps": best["fwd_GBps"],
            "impl_fwd_fraction_of_peak": best["fwd_GBps"] / peak if peak else None,
        }
        del x
    return report


def format_report(report: dict) -> str:
    lines = [f"device {report['device']} ({report['device_name']}), {report['dtype']}, torch {report['torch']}, "
             f"{report['threads']} threads; B={report['shape']['B']} T={report['shape']['T']} "
             f"H=W={report['shape']['H']}, kernel {tuple(report['shape']['kernel'])}; peak memory bandwidth "
             + (f"{report['peak_memory_GBps']:.0f} GB/s" if report["peak_memory_GBps"] else "not reported"),
             f"{'op':<20} {'size':<7} {'implementation':<15} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd GB/s':>9}"]
    for op, sizes in report["ops"].items():
        for size, rows in sizes.items():
            for impl, t in rows.items():
                if "unsupported" in t:
                    lines.append(f"{op:<20} {size:<7} {impl:<15} unsupported here: {t['unsupported'][:60]}")
                    continue
                fb = f"{t['fwd_bwd_ms']:11.3f}" if "fwd_bwd_ms" in t else f"{'-':>11}"
                bw = f"{t['fwd_GBps']:9.1f}" if "fwd_GBps" in t else f"{'-':>9}"
                lines.append(f"{op:<20} {size:<7} {impl:<15} {t['fwd_ms']:9.3f} {fb} {bw}")
    for label, r in report["ratios"].items():
        avg = r["avg_pool3d_over_impl_fwd"]
        lines.append(f"{label} [{r['implementation']}]: {r['unfold_over_impl_fwd']:.1f}x faster than unfold fwd, "
                     f"{r['unfold_over_impl_fwd_bwd']:.1f}x fwd+bwd; "
                     + (f"avg_pool3d takes {avg:.1f}x as long; " if avg else "")
                     + f"{r['impl_over_read_x_fwd']:.2f}x the time of one read of x; "
                     f"{r['native_over_impl_fwd']:.1f}x faster than native fwd, {r['native_over_impl_fwd_bwd']:.1f}x fwd+bwd; "
                     f"fwd moves {r['impl_fwd_GBps']:.1f} GB/s"
                     + (f" = {r['impl_fwd_fraction_of_peak']:.0%} of peak" if r["impl_fwd_fraction_of_peak"] else ""))
    return "\n".join(lines)

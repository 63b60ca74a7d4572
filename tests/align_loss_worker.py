"""Run by test_align.py under torchrun (2 processes, gloo): each process takes its half of a fixed batch through
a tiny linear encoder pair and a contrastive loss gathered across processes, averages the parameter gradients
as a data-parallel engine does, and saves (its loss, the averaged gradients) to OUT/rank<R>.pt.

    python -m torch.distributed.run --nproc-per-node 2 tests/align_loss_worker.py OUT
"""

import sys

import torch
import torch.distributed as dist

from ppllava.align.losses import LOSSES


def encoders(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.nn.Linear(6, 4).double()
    text = torch.nn.Linear(5, 4).double()
    with torch.no_grad():
        for p in [*image.parameters(), *text.parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    return image, text, scale, bias


def batch(n: int = 8, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randn(n, 5, generator=gen, dtype=torch.float64)


def loss_and_grads(name: str, images, texts, valid=None):
    image, text, scale, bias = encoders()
    f = torch.nn.functional.normalize
    loss = LOSSES[name]()(f(image(images), dim=-1), f(text(texts), dim=-1), scale.exp(), bias, valid)
    loss.backward()
    params = [*image.parameters(), *text.parameters(), scale, bias]
    return loss.detach(), [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    images, texts = batch()
    half = len(images) // world
    mine = slice(rank * half, (rank + 1) * half)
    valid = torch.ones(len(images), dtype=torch.bool)
    valid[[1, 2, 5]] = False                                # padded rows: two on process 0, one on process 1
    out = {}
    for name in LOSSES:
        for masked in (False, True):
            loss, grads = loss_and_grads(name, images[mine], texts[mine], valid[mine] if masked else None)
            for g in grads:                                 # the engine's gradient averaging
                dist.all_reduce(g)
                g /= world
            out[name, masked] = (loss, grads)
    torch.save(out, f"{sys.argv[1]}/rank{rank}.pt")
    dist.destroy_process_group()

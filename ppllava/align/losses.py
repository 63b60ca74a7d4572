"""Contrastive losses for aligning a text tower to a frozen vision tower, gathered across processes.

They follow open_clip's `ClipLoss` and `SigLipLoss` (open_clip/loss.py) and give the same numbers
(tests/test_align.py compares them where open_clip imports); they are written here because
open_clip pulls torchvision, which does not load on every machine this project runs on (DESIGN.md).

    ClipLoss     symmetric InfoNCE over the global batch: every process all-gathers the image and text
                 features with gradients (open_clip's gather_features(local_loss=False,
                 gather_with_grad=True)) and computes the same loss on the whole batch.
    SigLipLoss   the pairwise sigmoid loss with a learnable scale and bias: each process scores its own
                 images against every process's texts (the all-gather variant; open_clip's neighbour
                 exchange sums the same terms in another order), divided by its local batch size.

With a data-parallel engine averaging gradients over processes, both give exactly the gradients of
the one-process loss on the concatenated batch (ClipLoss) or of its mean over processes (SigLipLoss).
Features must be L2-normalised by the caller, as in open_clip.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather in the forward; the backward sums every process's gradient for this process's slice.

    torch.distributed.nn.all_gather emulates reduce-scatter with all_to_all off NCCL, which gloo lacks;
    all_reduce exists on every backend (gloo, nccl, hccl)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` concatenated in rank order (every process's micro-batch must have the same
    size); gradients reach each process's own rows."""
    _, world = distributed_world()
    return tensor if world == 1 else _GatherWithGrad.apply(tensor)


class ClipLoss(torch.nn.Module):
    """(CE(logits_per_image, arange) + CE(logits_per_text, arange)) / 2 over the global batch.

    `valid` (B,) bool marks the rows that hold a pair (micro-batches are padded to one size on every process
    so that the gathers line up); the others are left out of the loss."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        images, texts = gather_with_grad(image_features), gather_with_grad(text_features)
        if valid is not None:
            keep = gather_with_grad(valid.to(images.dtype)) > 0.5
            images, texts = images[keep], texts[keep]
            if len(images) == 0:                       # nothing readable anywhere: a zero that reaches every input
                return (image_features.sum() + text_features.sum()) * 0.0 * logit_scale
        logits_per_image = logit_scale * images @ texts.T
        labels = torch.arange(len(images), device=images.device)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2


class SigLipLoss(torch.nn.Module):
    """-sum(logsigmoid(label * (scale * img @ txt.T + bias))) / local batch, label +1 on matching pairs else -1;
    this process's images against all processes' texts. `valid` as in ClipLoss; the local batch is then the
    valid rows of all processes over their number, so that the processes' mean stays the one-process loss
    on all valid pairs when they hold different numbers of them."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        rank, world = distributed_world()
        texts = gather_with_grad(text_features)
        logits = logit_scale * image_features @ texts.T
        if logit_bias is not None:
            logits = logits + logit_bias
        local = image_features.shape[0]
        labels = -torch.ones_like(logits)
        labels[:, rank * local:(rank + 1) * local] += 2 * torch.eye(local, device=logits.device, dtype=logits.dtype)
        terms = -F.logsigmoid(labels * logits)
        if valid is None:
            return terms.sum() / local
        mask = valid.to(logits.dtype)
        every = gather_with_grad(mask)
        pair_mask = mask[:, None] * every[None, :]
        return (terms * pair_mask).sum() / (every.sum() / world).clamp(min=1 / world)


LOSSES = {"clip": ClipLoss, "siglip": SigLipLoss}
# open_clip's initial values: CLIP log(1/0.07) and no bias; SigLIP log(10) and bias -10
INIT = {"clip": (2.6592, None), "siglip": (2.3026, -10.0)}

"""Slow, obviously-correct loop implementations of both ops (float64, small shapes only)."""

import math

import torch


def pool_loop(x, relevance, kernel, stride, temperature):
    B, T, H, W, D = x.shape
    out_size = [(n - k) // s + 1 for n, k, s in zip((T, H, W), kernel, stride)]
    out = torch.zeros(B, *out_size, D, dtype=torch.float64)
    for b in range(B):
        for i in range(out_size[0]):
            for j in range(out_size[1]):
                for k in range(out_size[2]):
                    positions = [(i * stride[0] + a, j * stride[1] + c, k * stride[2] + e)
                                 for a in range(kernel[0]) for c in range(kernel[1]) for e in range(kernel[2])]
                    logits = [float(relevance[b, t, h, w]) / temperature for t, h, w in positions]
                    top = max(logits)
                    weights = [math.exp(v - top) for v in logits]
                    total = sum(weights)
                    for (t, h, w), wt in zip(positions, weights):
                        out[b, i, j, k] += (wt / total) * x[b, t, h, w].double()
    return out


def relevance_loop(video, text, logit_scale, mask=None):
    B, T, H, W, _ = video.shape
    out = torch.zeros(B, T, H, W, dtype=torch.float64)
    for b in range(B):
        c = text[b].double()
        c = c / c.norm()
        logits = {}
        for t in range(T):
            if mask is not None and not mask[b, t]:
                continue
            for h in range(H):
                for w in range(W):
                    v = video[b, t, h, w].double()
                    logits[t, h, w] = logit_scale * float(v @ c) / float(v.norm())
        top = max(logits.values())
        total = sum(math.exp(v - top) for v in logits.values())
        for (t, h, w), v in logits.items():
            out[b, t, h, w] = math.exp(v - top) / total
    return out


def long_clip_positions(old, keep=20):
    """Long-CLIP's published loop for the 4x stretched position table (the reference the paper follows)."""
    length, dim = old.shape
    new = torch.zeros(4 * length - 3 * keep, dim, dtype=torch.float64)
    old = old.double()
    for i in range(keep):
        new[i] = old[i]
    for i in range(length - 1 - keep):
        a, b = old[i + keep], old[i + 1 + keep]
        new[4 * i + keep] = a
        new[4 * i + 1 + keep] = 3 * a / 4 + 1 * b / 4
        new[4 * i + 2 + keep] = 2 * a / 4 + 2 * b / 4
        new[4 * i + 3 + keep] = 1 * a / 4 + 3 * b / 4
    last, step = old[length - 1], old[length - 1] - old[length - 2]
    for j in range(4):
        new[4 * length - 3 * keep - 4 + j] = last + j * step / 4
    return new


def get_size_output_mode(input_size, output_size):
    """The authors' get_size(input_size, output_size) (their ppllava/models/utils.py, kernel and stride None):
    stride = I // O and kernel = I - (O - 1) * stride per axis."""
    kernel, stride = [], []
    for i, o in zip(input_size, output_size):
        s = i // o
        stride.append(s)
        kernel.append(i - (o - 1) * s)
    return tuple(output_size), tuple(kernel), tuple(stride)

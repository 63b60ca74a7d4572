"""The BT-Adapter of the authors' released Vicuna models, as an option of a CLIP vision tower.

A branch beside the last `depth` CLIP layers (their clip_btadapter.py, CLIPVisionTransformer_BTAdapter).
After CLIP layer `start + i` (start = layers - depth) the branch adds the CLIP output to its state, attends
over time (each patch across the frames of its video), then over space (each frame's patches, with one CLS
per video), and carries the result on. From then on the tower's hidden state of a frame is CLIP's CLS
followed by (CLIP patch + branch patch) / 2: that is what the feature layer reads. The frames of one video
go through together; an image is a video of one frame.

The branch holds one video per row: (B, 1 + P*T, D), a CLS then the patches patch-major, (p t) as theirs.
Their layer norms are nn.LayerNorm's default eps (1e-5) whatever the CLIP config says, and their temporal
layers all drop paths at the full rate (a quirk of their constructor call), the spatial ones at 0..rate.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPMLP

EPS = 1e-5


class DropPath(nn.Module):
    """Stochastic depth: in training, zero whole rows (first dim) with probability `rate`, scale the rest."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        keep = 1 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class TemporalLayer(nn.Module):
    """Attention of each patch over the frames of its video, through a linear layer into the residual."""

    def __init__(self, vision_config, drop_path: float):
        super().__init__()
        width = vision_config.hidden_size
        self.self_attn = CLIPAttention(vision_config)
        self.layer_norm1 = nn.LayerNorm(width, eps=EPS)
        self.temporal_fc = nn.Linear(width, width)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        b, pt, d = patches.shape
        h = self.layer_norm1(patches.reshape(b * (pt // frames), frames, d))    # (b p) t d
        h = self.temporal_fc(self.drop_path(self.self_attn(h)[0]))
        return torch.cat([cls, patches + h.reshape(b, pt, d)], dim=1)


class SpatialLayer(nn.Module):
    """A CLIP encoder layer over each frame's patches; the video's CLS joins every frame and is averaged back."""

    def __init__(self, vision_config, drop_path: float):
        super().__init__()
        width = vision_config.hidden_size
        self.self_attn = CLIPAttention(vision_config)
        self.layer_norm1 = nn.LayerNorm(width, eps=EPS)
        self.mlp = CLIPMLP(vision_config)
        self.layer_norm2 = nn.LayerNorm(width, eps=EPS)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        b, pt, d = patches.shape
        p = pt // frames
        per_frame = torch.cat([cls.repeat_interleave(frames, dim=0), to_frames(patches, frames)], dim=1)
        h = self.drop_path(self.self_attn(self.layer_norm1(per_frame))[0])       # (b t) 1+p d
        cls_out = h[:, :1].reshape(b, frames, 1, d).mean(dim=1)
        x = x + torch.cat([cls_out, to_branch(h[:, 1:], frames)], dim=1)
        return x + self.mlp(self.layer_norm2(x))


def to_frames(patches: torch.Tensor, frames: int) -> torch.Tensor:
    """(b, p*t, d) patch-major -> (b*t, p, d)."""
    b, pt, d = patches.shape
    return patches.reshape(b, pt // frames, frames, d).transpose(1, 2).reshape(b * frames, pt // frames, d)


def to_branch(patches: torch.Tensor, frames: int) -> torch.Tensor:
    """(b*t, p, d) -> (b, p*t, d) patch-major."""
    bt, p, d = patches.shape
    return patches.reshape(bt // frames, frames, p, d).transpose(1, 2).reshape(bt // frames, p * frames, d)


class BTAdapter(nn.Module):
    def __init__(self, vision_config, depth: int, max_frames: int, drop_path: float):
        super().__init__()
        width = vision_config.hidden_size
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]   # linspace(0, rate)
        self.temporal = nn.ModuleList(TemporalLayer(vision_config, drop_path) for _ in range(depth))
        self.spatial = nn.ModuleList(SpatialLayer(vision_config, rate) for rate in rates)
        self.time_embed = nn.Embedding(max_frames, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))

    @property
    def depth(self) -> int:
        return len(self.spatial)

    def begin(self, clip_out: torch.Tensor, frames: int, positions: torch.Tensor) -> torch.Tensor:
        """The branch's first input from CLIP's output (b*t, 1+p, d): its own CLS and the patches with the
        tower's position embeddings and the time embedding; the CLS is averaged with CLIP's (their input_ini)."""
        x = clip_out.unflatten(0, (-1, frames))                                   # b t 1+p d
        cls = (x[:, :, 0].mean(dim=1, keepdim=True) + self.cls_token + positions[0]) / 2
        time = self.time_embed(torch.arange(frames, device=x.device))
        patches = x[:, :, 1:] + positions[1:] + time[:, None]
        return torch.cat([cls, to_branch(patches.flatten(0, 1), frames)], dim=1)

    def step(self, i: int, clip_out: torch.Tensor, branch: torch.Tensor | None, frames: int,
             positions: torch.Tensor) -> torch.Tensor:
        """The branch after CLIP layer start + i, from that layer's output (b*t, 1+p, d)."""
        if frames > self.time_embed.num_embeddings:
            raise ValueError(f"a video of {frames} frames is longer than the BT-Adapter's time embedding "
                             f"({self.time_embed.num_embeddings} frames, btadapter_max_frames)")
        if branch is None:
            x = self.begin(clip_out, frames, positions)
        else:
            x = clip_out.unflatten(0, (-1, frames))
            x = branch + torch.cat([x[:, :, 0].mean(dim=1, keepdim=True), to_branch(clip_out[:, 1:], frames)], dim=1)
        return self.spatial[i](self.temporal[i](x, frames), frames)

    @staticmethod
    def combine(clip_state: torch.Tensor, branch: torch.Tensor, frames: int) -> torch.Tensor:
        """The tower's hidden state (b*t, 1+p, d): CLIP's CLS, then CLIP's and the branch's patches averaged."""
        return torch.cat([clip_state[:, :1], (clip_state[:, 1:] + to_frames(branch[:, 1:], frames)) / 2], dim=1)

    def forward(self, tower, pixel_values: torch.Tensor, frames: int, layer: int) -> torch.Tensor:
        """hidden_states[layer] of a CLIP vision tower (transformers' CLIPVisionModel) with this adapter, for
        videos of `frames` frames each, pixel_values (b*t, 3, S, S); the layers after it do not run.

        Every parameter is read inside its own module's call (ZeRO-3 gathers a module's parameters then)."""
        layers = tower.encoder.layers
        index = layer % (len(layers) + 1)
        start = len(layers) - self.depth
        x = tower.pre_layrnorm(tower.embeddings(pixel_values))
        positions = tower.embeddings.position_embedding(torch.arange(x.shape[1], device=x.device))
        branch = None
        for i in range(index):
            x = layers[i](x, None)
            if i >= start:
                branch = self.step(i - start, x, branch, frames, positions)
        return x if branch is None else self.combine(x, branch, frames)

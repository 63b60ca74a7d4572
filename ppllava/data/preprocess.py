"""Frames to pixel_values with torch ops only (no torchvision: see DESIGN.md), on any device.

Each vision tower family is preprocessed as its Hugging Face image processor does it:

    CLIP    resize the short side to S (bicubic, antialiased), centre crop S x S, OpenAI CLIP mean/std
    SigLIP  resize to S x S (bicubic, antialiased), mean/std 0.5
    InternViT  resize to S x S, ImageNet mean/std

The resize is Pillow's: one axis at a time in Pillow 13's order, rounded to 0..255 after each pass,
with Pillow's antialiased bicubic weights (as banded weighted sums on any device; through torch's
port of Pillow's uint8 kernel on the CPU). So the numbers match the reference processors, which
resize Pillow images, to within a grey level before normalising, on every device (a one-step float
F.interpolate differs from Pillow's by up to ~15 levels).
The input is a uint8 (T, H, W, 3) RGB tensor, one clip or image; the output is float32 (T, 3, S, S)
on the input's device: move the uint8 frames to the accelerator first to preprocess there.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backends.device import has_pillow_uint8_resize

from ..model.config import side

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# vision tower model_type -> (centre crop after a short-side resize?, mean, std)
PRESETS = {
    "clip_vision_model": (True, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "siglip_vision_model": (False, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "internvl_vision": (False, IMAGENET_MEAN, IMAGENET_STD),    # InternVL's processor: 448 x 448, ImageNet
}


def bicubic_weights(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) float64 resampling matrix of Pillow's antialiased bicubic filter.

    Pillow's precompute_coeffs: the cubic (a = -0.5) is widened by the downscale factor, each output
    sample takes the inputs within its support around centre (i + 0.5) * scale, and each row sums to 1.
    """
    scale = in_size / out_size
    widen = max(scale, 1.0)
    support = 2.0 * widen
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    lo = (centre - support + 0.5).trunc().clamp(min=0)
    hi = (centre + support + 0.5).trunc().clamp(max=in_size)
    x = torch.arange(in_size, dtype=torch.float64)
    d = ((x[None, :] - centre[:, None] + 0.5) / widen).abs()
    a = -0.5
    w = torch.where(d < 1, ((a + 2) * d - (a + 3)) * d * d + 1, torch.where(d < 2, (((d - 5) * d + 8) * d - 4) * a, 0.0))
    w = w * ((x[None, :] >= lo[:, None]) & (x[None, :] < hi[:, None]))
    return w / w.sum(dim=1, keepdim=True)


@functools.lru_cache(maxsize=64)
def bicubic_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The band of bicubic_weights: input indices (out_size, k) and their float32 weights (0 past the band)."""
    w = bicubic_weights(in_size, out_size)
    nonzero = (w != 0).float()
    first = nonzero.argmax(dim=1)
    last = in_size - 1 - nonzero.flip(1).argmax(dim=1)
    k = int((last - first + 1).max())                  # the span, not the count: the cubic is 0 at d = 1 inside it
    index = (first[:, None] + torch.arange(k)).clamp(max=in_size - 1)
    weight = w.gather(1, index) * (first[:, None] + torch.arange(k) < in_size)
    return index, weight.float()


def _resample_last(x: torch.Tensor, out_size: int, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """Pillow's pass along the last axis, rounded half up to 0..255; frames in chunks to bound memory."""
    index, weight = bicubic_taps(x.shape[-1], out_size)
    index, weight = index.to(x.device), weight.to(x.device)
    per_frame = x[0].numel() // x.shape[-1] * index.numel()
    step = max(1, chunk_elements // max(per_frame, 1))
    out = [(x[i:i + step][..., index] * weight).sum(-1).add_(0.5).floor_().clamp_(0, 255)
           for i in range(0, x.shape[0], step)]
    return torch.cat(out)


def _resample_last_uint8(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """The same pass through torch's CPU uint8 kernel (a port of Pillow's; ~20x faster than the gather)."""
    return F.interpolate(x, size=(x.shape[-2], out_size), mode="bicubic", antialias=True)


def pillow_resize(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Resize (T, C, H, W) images as Pillow resizes uint8 ones (BICUBIC), one axis at a time.

    uint8 on the CPU goes through torch's uint8 kernel; any other input (float holding whole numbers
    0..255, on any device) through the banded weighted sums. Both give Pillow's output to within one
    grey level when shrinking (the uint8 kernel to within two, on a few pixels, when enlarging).
    """
    h, w = x.shape[-2:]
    fast = x.dtype == torch.uint8 and has_pillow_uint8_resize(x.device.type)
    resample = _resample_last_uint8 if fast else _resample_last
    if x.dtype == torch.uint8 and resample is _resample_last:
        x = x.float()
    # Pillow 13 runs the vertical pass first when the height shrinks by more than twice the width
    vertical_first = h - out_h > max(0, 2 * (w - out_w))
    for axis in ("hw" if vertical_first else "wh"):
        if axis == "w" and out_w != w:
            x = resample(x, out_w)
        if axis == "h" and out_h != h:
            x = resample(x.transpose(-1, -2), out_h).transpose(-1, -2)
    return x


@dataclass(frozen=True)
class Preprocessor:
    size: int
    crop: bool                        # True: short side to `size` then centre crop; False: squash to size x size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def for_config(cls, config) -> "Preprocessor":
        """The preprocessing of a PPLLaVAConfig's vision tower at its image_size."""
        vision = config.vision_config
        if vision.model_type not in PRESETS:
            raise ValueError(f"no preprocessing preset for vision tower {vision.model_type!r} "
                             f"(known: {', '.join(sorted(PRESETS))})")
        crop, mean, std = PRESETS[vision.model_type]
        resize = getattr(config, "frame_resize", None)
        crop = crop if resize is None else resize == "crop"
        mean, std = tuple(getattr(config, "image_mean", None) or mean), tuple(getattr(config, "image_std", None) or std)
        return cls(side(vision.image_size), crop, mean, std)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) after the resize, before the crop (Hugging Face's rounding: the long side is truncated)."""
        if not self.crop:
            return self.size, self.size
        if height <= width:
            return self.size, int(self.size * width / height)
        return int(self.size * height / width), self.size

    def resize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> float (T, 3, h, w) holding whole numbers in 0..255."""
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {tuple(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).contiguous()      # the uint8 kernel wants channels-first memory
        return pillow_resize(x, *self.resized_shape(*x.shape[-2:])).float()

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.resize(frames)
        if self.crop:
            top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
            x = x[..., top:top + self.size, left:left + self.size]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255
        return ((x - mean) / std).contiguous()

    def anyres(self, image: torch.Tensor, pinpoints: list[list[int]]) -> torch.Tensor:
        """One uint8 (1, H, W, 3) image -> (1 + rows*cols, 3, S, S) as LLaVA-NeXT's image processor cuts it: the
        whole image squashed to S x S, then the crops of the grid resolution that fits it best (model/anyres.py),
        the image resized into it keeping its aspect (the short side rounded up), centred on black padding."""
        from ..model.anyres import best_resolution

        if image.dtype != torch.uint8 or image.ndim != 4 or image.shape[0] != 1 or image.shape[-1] != 3:
            raise ValueError(f"an image must be uint8 (1, H, W, 3) RGB, got {image.dtype} {tuple(image.shape)}")
        height, width = image.shape[1:3]
        target_h, target_w = best_resolution((height, width), pinpoints)
        scale_w, scale_h = target_w / width, target_h / height
        if scale_w < scale_h:
            new_h, new_w = min(math.ceil(height * scale_w), target_h), target_w
        else:
            new_h, new_w = target_h, min(math.ceil(width * scale_h), target_w)
        x = image.permute(0, 3, 1, 2).contiguous()
        canvas = torch.zeros(1, 3, target_h, target_w, device=image.device)
        top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
        canvas[..., top:top + new_h, left:left + new_w] = pillow_resize(x, new_h, new_w).float()
        s = self.size
        crops = [canvas[..., i:i + s, j:j + s] for i in range(0, target_h, s) for j in range(0, target_w, s)]
        x = torch.cat([pillow_resize(x, s, s).float(), *crops])
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255
        return ((x - mean) / std).contiguous()


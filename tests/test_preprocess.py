"""Preprocessing in torch ops against Pillow's resize (what the Hugging Face processors use) and by hand."""

import numpy as np
import pytest
import torch
from PIL import Image

from ppllava.data.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessor, bicubic_weights, pillow_resize
from ppllava.model import load_config

CLIP = Preprocessor(48, True, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
SIGLIP = Preprocessor(54, False, (0.5,) * 3, (0.5,) * 3)


def unnormalise(pre: Preprocessor, x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    return (x * std + mean) * 255


def random_frames(t, h, w, seed=0):
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pre,h,w", [(CLIP, 80, 120), (CLIP, 120, 70), (CLIP, 30, 40),
                                       (SIGLIP, 90, 60), (SIGLIP, 60, 90), (SIGLIP, 40, 200)])
def test_resize_matches_pillow_bicubic_within_one_level(pre, h, w):
    frames = random_frames(2, h, w)
    ours = pre.resize(frames)
    height, width = pre.resized_shape(h, w)
    for i in range(2):
        ref = Image.fromarray(frames[i].numpy()).resize((width, height), Image.BICUBIC)
        ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1).float()
        assert ours[i].shape == ref.shape
        assert (ours[i] - ref).abs().max() <= 1


def test_short_side_rule_and_centre_crop_by_hand():
    assert CLIP.resized_shape(80, 120) == (48, 72) and CLIP.resized_shape(100, 48) == (100, 48)
    assert CLIP.resized_shape(33, 50) == (48, int(48 * 50 / 33))
    frames = random_frames(3, 48, 60)                   # short side already 48: no resize, crop columns 6..53
    out = CLIP(frames)
    assert out.shape == (3, 3, 48, 48) and out.dtype == torch.float32
    expect = frames.permute(0, 3, 1, 2)[..., :, 6:54].float()
    assert torch.allclose(unnormalise(CLIP, out), expect, atol=1e-3)


def test_normalisation_of_a_constant_image():
    frames = torch.full((1, 70, 50, 3), 200, dtype=torch.uint8)
    for pre in (CLIP, SIGLIP):
        out = pre(frames)
        assert out.shape == (1, 3, pre.size, pre.size)
        for c in range(3):
            assert torch.allclose(out[0, c], torch.tensor((200 / 255 - pre.mean[c]) / pre.std[c]), atol=1e-5)


def test_siglip_squashes_without_crop():
    frames = torch.zeros(1, 20, 80, 3, dtype=torch.uint8)
    frames[:, :, :40] = 255                              # left half white: stays the left half after squashing
    x = unnormalise(SIGLIP, SIGLIP(frames))[0, 0]
    assert x[:, :20].min() > 250 and x[:, 34:].max() < 5


def test_bad_input_and_presets():
    with pytest.raises(ValueError, match=r"uint8 \(T, H, W, 3\)"):
        CLIP(torch.zeros(1, 3, 48, 48))
    pre = Preprocessor.for_config(load_config("tiny"))
    assert (pre.size, pre.crop, pre.mean) == (48, True, OPENAI_CLIP_MEAN)
    config = load_config("tiny")
    config.vision_config.model_type = "mystery"
    with pytest.raises(ValueError, match="no preprocessing preset for vision tower 'mystery'"):
        Preprocessor.for_config(config)


@pytest.mark.parametrize("h,w,out_h,out_w", [(120, 90, 48, 64), (90, 60, 54, 54), (200, 40, 54, 54), (30, 40, 48, 64),
                                             (144, 150, 48, 50)])      # 3x: zero weights inside the band
def test_cpu_uint8_kernel_and_banded_sums_agree_with_pillow(h, w, out_h, out_w):
    frames = random_frames(3, h, w, seed=h)
    x = frames.permute(0, 3, 1, 2).contiguous()
    fast, banded = pillow_resize(x, out_h, out_w).float(), pillow_resize(x.float(), out_h, out_w)
    for i in range(3):
        ref = torch.from_numpy(np.array(Image.fromarray(frames[i].numpy()).resize((out_w, out_h), Image.BICUBIC)))
        ref = ref.permute(2, 0, 1).float()
        assert (banded[i] - ref).abs().max() <= 1
        assert (fast[i] - ref).abs().max() <= (1 if out_h <= h and out_w <= w else 2)
    assert (fast - banded).abs().float().mean() < 0.01


def test_bicubic_weights_rows_sum_to_one_and_identity_at_scale_one():
    w = bicubic_weights(50, 20)
    assert torch.allclose(w.sum(1), torch.ones(20, dtype=torch.float64))
    assert torch.equal(bicubic_weights(7, 7), torch.eye(7, dtype=torch.float64))


@pytest.mark.parametrize("size", [(300, 500), (700, 240), (336, 336)])
def test_anyres_crops_are_llava_next_image_processors(size):
    """Preprocessor.anyres against transformers' LlavaNextImageProcessorPil (Pillow) on a noise image: the same
    crops in the same order; values within Pillow's rounding (at most 2 grey levels, on under 1% of them)."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]      # LLaVA-NeXT's
    reference = LlavaNextImageProcessorPil(image_grid_pinpoints=pinpoints, size={"shortest_edge": 336},
                                           crop_size={"height": 336, "width": 336}, image_mean=list(OPENAI_CLIP_MEAN),
                                           image_std=list(OPENAI_CLIP_STD), do_pad=False)
    image = torch.randint(0, 256, (1, *size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(size[0]))
    expected = reference(images=[image[0].numpy()], return_tensors="pt")["pixel_values"][0]
    ours = Preprocessor(336, True, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).anyres(image, pinpoints)
    assert ours.shape == expected.shape
    grey = ((ours - expected) * torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1) * 255).abs()
    assert float(grey.max()) <= 2.01 and float((grey > 0.01).float().mean()) < 0.01

import pytest
import torch

import backends
from oracles import relevance_loop


def _inputs(B=2, T=3, H=4, W=5, C=16, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, H, W, C, generator=gen, dtype=dtype), torch.randn(B, C, generator=gen, dtype=dtype)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_matches_loop_oracle(relevance_impl, scale):
    video, text = _inputs()
    torch.testing.assert_close(backends.relevance_map(video, text, scale), relevance_loop(video, text, scale))


def test_one_softmax_over_the_whole_sample_not_per_frame(relevance_impl):
    video, text = _inputs(T=4)
    S = backends.relevance_map(video, text, 100.0)
    torch.testing.assert_close(S.sum(dim=(1, 2, 3)), torch.ones(2, dtype=torch.float64))
    assert not torch.allclose(S.sum(dim=(2, 3)), torch.full((2, 4), 0.25, dtype=torch.float64))


def test_embeddings_are_normalised_inside(relevance_impl):
    video, text = _inputs()
    scaled = video * torch.rand(video.shape[:4] + (1,), dtype=torch.float64) * 10
    torch.testing.assert_close(backends.relevance_map(scaled, 3 * text, 100.0), backends.relevance_map(video, text, 100.0))


def test_mask_zeroes_padded_frames_and_matches_the_unpadded_video(relevance_impl):
    video, text = _inputs(B=2, T=5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    S = backends.relevance_map(video, text, 100.0, mask)
    assert (S[1, 3:] == 0).all()
    alone = backends.relevance_map(video[1:, :3], text[1:], 100.0)
    torch.testing.assert_close(S[1:, :3], alone)
    torch.testing.assert_close(S[0], backends.relevance_map(video[:1], text[:1], 100.0)[0])


def test_gradcheck_including_logit_scale(relevance_impl):
    video, text = _inputs(B=2, T=2, H=2, W=3, C=5)
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    args = (video.requires_grad_(), text.requires_grad_(), scale)
    assert torch.autograd.gradcheck(lambda v, t, s: backends.relevance_map(v, t, s, mask), args)


def test_bfloat16_in_bfloat16_out_computed_in_float32(relevance_impl):
    video, text = _inputs(C=64, dtype=torch.float32)
    video, text = video.bfloat16(), text.bfloat16()
    S = backends.relevance_map(video, text, 100.0)
    assert S.dtype == torch.bfloat16
    exact = relevance_loop(video.double(), text.double(), 100.0)
    assert ((S.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-30).all()

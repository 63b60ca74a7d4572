import math

import pytest
import torch

import backends

x = torch.randn(1, 4, 6, 6, 8)
S = torch.rand(1, 4, 6, 6)
video, text = torch.randn(2, 3, 4, 4, 16), torch.randn(2, 16)


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=x[0]), r"^x: expected a 5-D tensor \(B, T, H, W, D\)"),
    (dict(relevance=S[0]), r"^relevance: expected a 4-D tensor"),
    (dict(relevance=S[:, :3]), r"^relevance: shape \(1, 3, 6, 6\) does not match x's"),
    (dict(kernel=(5, 3, 3)), r"^kernel: .* larger than the input along T \(5 > 4\)"),
    (dict(kernel=(2, 7, 3)), r"^kernel: .* along H"),
    (dict(kernel=(2, 3)), r"^kernel: expected three positive ints"),
    (dict(stride=(0, 1, 1)), r"^stride: expected three positive ints"),
    (dict(temperature=0.0), r"^temperature: must be a positive finite number"),
    (dict(temperature=-1), r"^temperature: must be a positive"),
    (dict(temperature=math.inf), r"^temperature: must be a positive finite"),
    (dict(x=x.long()), r"^x: expected a floating-point tensor"),
])
def test_pool_bad_input_names_the_argument(kwargs, match):
    args = dict(x=x, relevance=S, kernel=(2, 3, 3), stride=None, temperature=0.01) | kwargs
    with pytest.raises(ValueError, match=match):
        backends.prompt_guided_pool(**args)


def test_pool_non_finite_relevance_poisons_only_its_windows():
    """No host sync to look for nan: like torch's own ops, a nan spreads (to its windows, no further), so
    a training run sees it in the loss and applies its non-finite policy on every process at once."""
    bad = S.clone()
    bad[0, 2, 4, 1] = math.nan                                # frame 2 -> pooled frame 1; row 4, col 1 -> window (1, 0)
    out = backends.prompt_guided_pool(x, bad, kernel=(2, 3, 3))
    poisoned = torch.zeros(out.shape[:4], dtype=torch.bool)
    poisoned[0, 1, 1, 0] = True
    assert out[poisoned].isnan().all()
    torch.testing.assert_close(out[~poisoned], backends.prompt_guided_pool(x, S, kernel=(2, 3, 3))[~poisoned])


@pytest.mark.parametrize("kwargs,match", [
    (dict(video_embeds=video[0]), r"^video_embeds: expected a 5-D tensor \(B, T, H, W, C\)"),
    (dict(text_embeds=text[:1]), r"^text_embeds: expected shape \(B, C\) = \(2, 16\)"),
    (dict(text_embeds=torch.randn(2, 8)), r"^text_embeds: expected shape"),
    (dict(logit_scale=0), r"^logit_scale: must be a positive"),
    (dict(logit_scale=torch.tensor([1.0, 2.0])), r"^logit_scale: expected a scalar"),
    (dict(mask=torch.ones(2, 3)), r"^mask: expected a bool tensor of shape \(B, T\)"),
    (dict(mask=torch.tensor([[True] * 3, [False] * 3])), r"^mask: every sample needs at least one unmasked frame"),
])
def test_relevance_bad_input_names_the_argument(kwargs, match):
    args = dict(video_embeds=video, text_embeds=text, logit_scale=100.0, mask=None) | kwargs
    with pytest.raises(ValueError, match=match):
        backends.relevance_map(**args)

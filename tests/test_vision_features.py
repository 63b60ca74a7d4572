"""The vision tower stops at its feature layer (TowerFamily.feature_layer): for every tower family the features
are bit for bit the full tower's (output_hidden_states=True) in float32, the layers after the feature layer never
run, and every parameter is read inside its own module's call (as ZeRO-3, which gathers a module's parameters
only then, needs)."""

import contextlib

import pytest
import torch
from transformers import AutoModel, CLIPVisionConfig, SiglipVisionConfig
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

from ppllava.model.towers import FAMILIES

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4)


def _towers():
    yield "clip", CLIPVisionConfig(**SMALL, image_size=16, patch_size=4, projection_dim=16)
    yield "siglip", SiglipVisionConfig(**SMALL, image_size=16, patch_size=4)
    for mean_pooling in (True, False):     # a final LayerNorm (False) or none (nn.Identity)
        yield "internvl", InternVLVisionConfig(**SMALL, image_size=16, patch_size=4, use_mean_pooling=mean_pooling,
                                               layer_scale_init_value=0.5)


TOWERS = list(_towers())
IDS = [f"{name}-{getattr(c, 'use_mean_pooling', '')}".rstrip("-") for name, c in TOWERS]


def _build(config, seed=0):
    torch.manual_seed(seed)
    tower = AutoModel.from_config(config).eval()
    for p in tower.parameters():               # random layer norms too, so a skipped norm would show
        p.data += 0.05 * torch.randn_like(p)
    return tower


@contextlib.contextmanager
def zero3_like(model):
    """Every parameter is an empty tensor except while its own module's forward runs (as ZeRO-3 partitions them)."""
    full = {p: p.data for p in model.parameters()}
    empty = {p: torch.empty(0, dtype=p.dtype) for p in full}

    def gather(module, *_):
        for p in module.parameters(recurse=False):
            p.data = full[p]

    def release(module, *_):
        for p in module.parameters(recurse=False):
            p.data = empty[p]

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(gather),
                                                     m.register_forward_hook(release))]
    for p in full:
        p.data = empty[p]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for p, data in full.items():
            p.data = data


@pytest.mark.parametrize("name,config", TOWERS, ids=IDS)
def test_features_equal_the_full_towers_hidden_states_bit_for_bit(name, config):
    tower, family = _build(config), FAMILIES[name]
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        full = tower(pixel_values=pixels, output_hidden_states=True)
        assert len(full.hidden_states) == config.num_hidden_layers + 1
        for layer in (-1, -2, -3, -5, 0, 1, 3, 4):
            early = family.feature_layer(tower, pixels, layer)
            want = family.vision_features(full, layer)
            assert torch.equal(early, want), (name, layer)
        if name == "internvl":                     # -1 is last_hidden_state, after the final norm when there is one
            normed = not config.use_mean_pooling
            assert torch.equal(family.feature_layer(tower, pixels, -1), full.last_hidden_state)
            assert torch.equal(full.last_hidden_state, full.hidden_states[-1]) is not normed
        else:
            assert torch.equal(family.feature_layer(tower, pixels, -1), full.hidden_states[-1])


@pytest.mark.parametrize("name,config", TOWERS, ids=IDS)
def test_layers_after_the_feature_layer_never_run_and_params_are_read_in_their_module(name, config):
    tower, family = _build(config), FAMILIES[name]
    pixels = torch.randn(2, 3, 16, 16)
    want = family.vision_features(tower(pixel_values=pixels, output_hidden_states=True), -2).detach()
    calls = []
    layers = family.encoder_layers(tower)
    for i, block in enumerate(layers):
        block.register_forward_hook(lambda *_, i=i: calls.append(i))
    with zero3_like(tower):
        got = family.feature_layer(tower, pixels, -2)      # would fail on an empty parameter read outside its module
    assert calls == list(range(len(layers) - 1))
    assert torch.equal(got.detach(), want)
    got.sum().backward()                                   # the layers that ran get gradients, the last one none
    assert layers[0].mlp.fc1.weight.grad is not None
    assert all(p.grad is None for p in layers[-1].parameters())

"""Configs, architectures and inputs that do not fit give one ValueError naming the mismatch."""

import pytest
import torch
import yaml

from ppllava.model.synthetic import make_batch, visual_kwargs
from ppllava.model import build_model, load_config
from ppllava.model.factory import CONFIG_DIR, config_from_dict


def _tiny_dict():
    return yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0).eval()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["prompt_config"].update(projection_dim=8), "prompt tower projects to 8 dims but the vision patch projection gives 16"),
    (lambda d: d["vision_config"].update(model_type="vit"), "unknown vision tower architecture 'vit'"),
    (lambda d: d["prompt_config"].update(model_type="siglip_text_model"), "does not pair with vision tower 'clip_vision_model'"),
    (lambda d: d.update(video_kernel=[2, 3]), r"video_kernel must be three positive ints"),
    (lambda d: d.update(vision_feature_layer=-4), "vision_feature_layer -4 is outside"),
    (lambda d: d.update(image_token_id=600), "image_token_id 600 is outside the LLM's vocabulary"),
    (lambda d: d.update(pooling_kernel=[1, 2, 2]), "unknown field.*pooling_kernel"),
])
def test_config_mismatches(edit, message):
    data = _tiny_dict()
    edit(data)
    with pytest.raises(ValueError, match=message):
        config_from_dict(data, "tiny.yaml")


def test_unknown_architecture_name():
    with pytest.raises(ValueError, match="unknown model architecture 'llava-next-13b'; known: .*tiny"):
        load_config("llava-next-13b")


def test_placeholder_count_must_match_the_visual_tokens(model):
    batch = make_batch(model.config, [(4, True, 0)])
    ids = batch["input_ids"].clone()
    ids[0, ids[0].tolist().index(model.config.video_token_id)] = 5      # one placeholder too few
    with pytest.raises(ValueError, match=r"placeholder tokens per batch row \[127\] do not match .* \[128\]"):
        model(**dict(batch, input_ids=ids))
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=batch["input_ids"])


@pytest.mark.parametrize("change, message", [
    (dict(prompt_input_ids=None), "prompt_input_ids are required"),
    (dict(visual_frames=torch.tensor([3])), r"visual_frames \[3\] must be >= 1 and sum to the 4 frames"),
    (dict(visual_sample=torch.tensor([1])), r"visual_sample \[1\] must be non-decreasing batch rows in 0..0"),
    (dict(pixel_values=torch.randn(4, 3, 40, 40)), r"image size \(40\*40\) doesn't match model \(48\*48\)"),
    (dict(prompt_input_ids=torch.ones(1, 300, dtype=torch.long)), "300 tokens, more than the prompt tower's 248"),
])
def test_visual_input_errors(model, change, message):
    batch = make_batch(model.config, [(4, True, 0)])
    with pytest.raises(ValueError, match=message):
        model.encode_visuals(**dict(visual_kwargs(batch), **change))

"""Every architecture in configs/model builds (on the meta device: no memory) with the paper's sizes."""

import pytest
import torch

from ppllava.model import PPLLaVAForConditionalGeneration, available_architectures, load_config

# (patch grid, tokens of a 32-frame video, of an image crop, prompt positions, parameters in billions)
EXPECTED = {
    "testbed": (12, 16, 16, 77, None),                     # 2304 patches of a 16-frame clip -> 8 tokens
    "tiny": (24, 1024, 64, 248, None),
    "llava-next-7b": (24, 1024, 64, 248, (7.0, 7.6)),     # Vicuna-7B 6.7 + CLIP-L vision 0.30 + text 0.12
    "llava-video-7b": (27, 1296, 81, 196, (8.2, 8.8)),    # Qwen2-7B 7.6 + SigLIP vision 0.40 + text 0.45
    "internvl3-8b": (16, 1024, 64, 248, (7.9, 8.3)),      # Qwen2.5-7B 7.6 + InternViT 0.30 + aligned CLIP text 0.12
}


def test_every_yaml_is_covered():
    assert sorted(EXPECTED) == available_architectures()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_architecture_sizes(name):
    grid, video, image, positions, billions = EXPECTED[name]
    config = load_config(name)
    assert config.patch_grid == grid
    assert config.visual_tokens(32, True) == video and config.visual_tokens(1, False) == image
    assert config.prompt_config.max_position_embeddings == positions
    with torch.device("meta"):
        model = PPLLaVAForConditionalGeneration(config)
    if billions:
        total = sum(p.numel() for p in model.parameters()) / 1e9
        assert billions[0] < total < billions[1], total

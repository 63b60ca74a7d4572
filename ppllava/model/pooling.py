"""PromptGuidedPooling: the prompt tower, the per-patch visual projection, and the two backend ops."""

from __future__ import annotations

import torch
from torch import nn

import backends

from .config import PPLLaVAConfig
from .context import freeze_rows


class PromptGuidedPooling(nn.Module):
    """relevance = softmax over the item of relevance_scale * cos(patch_projection(patches), text_embeds);
    each window of x is then averaged with weights softmax(relevance_window / temperature).

    A container of the two parameterised parts (the prompt tower, the patch projection) and the pooling
    step; it has no forward of its own (see `pool`)."""

    def __init__(self, config: PPLLaVAConfig):
        super().__init__()
        self.config = config
        self.family = config.tower_family()
        self.prompt_tower = self.family.text_class(config.prompt_config)
        if config.prompt_frozen_positions:
            freeze_rows(self.prompt_tower, self.family.position_embedding_path, config.prompt_frozen_positions)
        self.patch_projection = self.family.build_patch_projection(config)

    @property
    def prompt_max_length(self) -> int:
        return self.config.prompt_config.max_position_embeddings

    def encode_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) prompt ids -> (B, C) projected text features."""
        if input_ids.shape[1] > self.prompt_max_length:
            raise ValueError(f"prompt_input_ids: {input_ids.shape[1]} tokens, more than the prompt tower's "
                             f"{self.prompt_max_length} positions (tokenize with encode_prompts, which truncates)")
        return self.family.text_embeds(self.prompt_tower, input_ids, attention_mask)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (..., Dv) from the vision tower -> (..., C) in the text tower's space."""
        return self.patch_projection(patches)

    def pool(self, patch_embeds: torch.Tensor, text_embeds: torch.Tensor, x: torch.Tensor, is_video: bool) -> torch.Tensor:
        """Pool x (n, T, h, w, D) guided by the relevance of patch_embeds (n, T, h, w, C) to text_embeds (n, C).

        Only the two backend ops run here, no module: the model calls each parameterised module once per
        forward, whatever mix of videos and images a batch holds, which ZeRO-3 needs (every process
        gathers the same parameters in the same order)."""
        kernel, stride = self.config.pooling_geometry(is_video, x.shape[1])
        relevance = backends.relevance_map(patch_embeds, text_embeds, self.config.relevance_scale)
        return backends.prompt_guided_pool(x, relevance, kernel=kernel, stride=stride,
                                           temperature=self.config.pooling_temperature)

    def pool_unguided(self, x: torch.Tensor, is_video: bool) -> torch.Tensor:
        """The baselines: the average of each window of x (n, T, h, w, D) with the same kernels ("average"),
        or x itself ("none").

        The average is prompt_guided_pool with a uniform relevance map (softmax weights of exactly 1/K),
        i.e. avg_pool3d, through the backend op: it runs where avg_pool3d does not (the 910B for D > 1)."""
        if self.config.pooling_mode == "none":
            return x
        kernel, stride = self.config.pooling_geometry(is_video, x.shape[1])
        uniform = torch.zeros(x.shape[:4], dtype=torch.float32, device=x.device)
        return backends.prompt_guided_pool(x, uniform, kernel=kernel, stride=stride, temperature=1.0)

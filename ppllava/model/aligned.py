"""A CLIP-style text tower aligned to a vision tower that has none (InternViT in InternVL3): the "dual model"
`ppllava align` trains and `ppllava convert` reads for the InternVL family.

    AlignedTextTower
        text_tower        CLIPTextModelWithProjection: caption -> pooled, projected text feature (C)
        patch_projection  InternVLPatchProjection: each InternViT patch token -> C (LayerNorm + linear)
        logit_scale       log of the contrastive temperature's inverse; exp() becomes relevance_scale
        logit_bias        SigLIP's learnable bias (the sigmoid loss only)

An image's feature is the mean of its projected patch tokens, so the contrastive pass pulls every patch
toward the captions of what it shows: the per-patch relevance PPLLaVA pools with comes from the same
projection. The vision tower stays frozen and outside this model; its config is kept for the checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, CLIPTextModelWithProjection, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec

from ..align.losses import INIT, LOSSES


class InternVLPatchProjection(nn.Module):
    """LayerNorm + linear (no bias) from the vision width D into the text space (C), learned by `ppllava align`.

    Tokens that merge `merge` patches (InternVL's pixel shuffle: 2x2 patches -> one token of 4*D channels,
    patch-major) are split back into their patches, each projected, and averaged: a merged token's feature
    is the mean of its patches' features, as an image's feature is the mean of all of them."""

    def __init__(self, vision_config, out_dim: int, merge: int = 1):
        super().__init__()
        self.merge = merge
        self.layer_norm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.linear = nn.Linear(vision_config.hidden_size, out_dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.merge == 1:
            return self.linear(self.layer_norm(tokens))
        patches = tokens.unflatten(-1, (self.merge, -1))
        return self.linear(self.layer_norm(patches)).mean(dim=-2)


class AlignedTextTowerConfig(PreTrainedConfig):
    model_type = "ppllava_aligned_text"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_text_model"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="internvl_vision"),
    }

    text_config: dict | PreTrainedConfig | None = None     # the CLIP text tower (with projection_dim)
    vision_config: dict | PreTrainedConfig | None = None   # the frozen vision tower it is aligned to
    loss: str = "siglip"                                   # "clip" (InfoNCE) or "siglip" (sigmoid)
    vision_feature_layer: int = -1                         # which vision features it was aligned on
    vision_feature_select_strategy: str = "default"        # "default" drops the CLS token

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")


class AlignedTextTower(PreTrainedModel):
    config_class = AlignedTextTowerConfig
    config: AlignedTextTowerConfig
    base_model_prefix = "aligned_text"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: AlignedTextTowerConfig):
        super().__init__(config)
        self.text_tower = CLIPTextModelWithProjection(config.text_config)
        self.patch_projection = InternVLPatchProjection(config.vision_config, config.text_config.projection_dim)
        scale, bias = INIT[config.loss]
        # shape (1,), not open_clip's 0-dim: DeepSpeed's broadcast of bf16 parameters needs a dimension
        self.logit_scale = nn.Parameter(torch.tensor([scale]))
        self.logit_bias = nn.Parameter(torch.tensor([bias])) if bias is not None else None
        self.loss_fn = LOSSES[config.loss]()
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            scale, bias = INIT[self.config.loss]
            with torch.no_grad():
                self.logit_scale.fill_(scale)
                if self.logit_bias is not None:
                    self.logit_bias.fill_(bias)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) caption ids -> (B, C), L2-normalised."""
        embeds = self.text_tower(input_ids=input_ids, attention_mask=attention_mask).text_embeds
        return F.normalize(embeds.float(), dim=-1)

    def image_features(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, P, D) patch tokens of the frozen vision tower -> (B, C): mean of the projected patches, L2-normalised."""
        return F.normalize(self.patch_projection(patches.to(self.patch_projection.linear.weight.dtype)).float().mean(1),
                           dim=-1)

    def forward(self, patches: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                valid: torch.Tensor | None = None):
        """The contrastive loss of a micro-batch of (image patches, caption) pairs, gathered over processes;
        `valid` (B,) bool leaves padding rows out."""
        image, text = self.image_features(patches), self.text_features(input_ids, attention_mask)
        bias = self.logit_bias.float() if self.logit_bias is not None else None
        return self.loss_fn(image, text, self.logit_scale.float().exp(), bias, valid)

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters of each group (the optimizer's groups): text_tower, patch_projection, logit."""
        groups = {"text_tower": [], "patch_projection": [], "logit": []}
        for name, param in self.named_parameters():
            groups[name.split(".")[0] if "." in name else "logit"].append((name, param))
        return groups

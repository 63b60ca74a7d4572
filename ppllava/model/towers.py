"""The CLIP-style dual encoders PPLLaVA can pool with, as data: one `TowerFamily` per family.

A family says which transformers classes make its vision tower, its text (prompt) tower and its dual
model, how the text tower is read (pooled, projected features) and how patch tokens are brought into
the same space (the per-token visual projection). InternVL's InternViT has no paired text tower: its
family reads the CLIP text tower and patch projection that `ppllava align` trained (model/aligned.py).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPModel, CLIPTextModelWithProjection, SiglipModel, SiglipTextModel
from transformers.models.siglip.modeling_siglip import SiglipMLP, SiglipMultiheadAttentionPoolingHead

from .aligned import AlignedTextTower, InternVLPatchProjection
from .mapping import Rule

DUAL_VISION = "the dual model's own vision tower (the base's vision tower makes the features)"
SCALE = Rule("logit_scale", None, "exp(logit_scale) -> config.relevance_scale", config="relevance_scale")
BIAS = Rule("logit_bias", None, "the sigmoid loss's logit_bias: one constant added to every position's logit, "
                                "it cancels in the relevance softmax")


class CLIPPatchProjection(nn.Module):
    """CLIP's image-embedding path applied to every patch token: post-LayerNorm, then visual projection."""

    def __init__(self, vision_config):
        super().__init__()
        self.post_layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.visual_projection = nn.Linear(vision_config.hidden_size, vision_config.projection_dim, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.post_layernorm(patches))


class SiglipPatchProjection(nn.Module):
    """SigLIP's image-embedding path applied to every patch token on its own: post-LayerNorm, then the
    attention-pooling head over a one-token sequence (its attention weight is 1: out_proj(v_proj(x)),
    then the head's residual MLP). `head`: SiglipValueHead for the authors' checkpoints."""

    def __init__(self, vision_config, head: type = SiglipMultiheadAttentionPoolingHead):
        super().__init__()
        self.post_layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.head = head(vision_config)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        shape = patches.shape
        tokens = self.post_layernorm(patches).reshape(-1, 1, shape[-1])
        return self.head(tokens).reshape(*shape[:-1], -1)


class SiglipValueHead(nn.Module):
    """The authors' per-patch SigLIP head (their siglip.py SiglipPoolingHead_PatchCLS): the attention's value
    projection of each patch, without the output projection, then the head's residual MLP."""

    def __init__(self, vision_config):
        super().__init__()
        self.value = nn.Linear(vision_config.hidden_size, vision_config.hidden_size)
        self.layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.mlp = SiglipMLP(vision_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.value(x)
        return v + self.mlp(self.layernorm(v))


class TowerFamily:
    """What PPLLaVA needs to know about one dual-encoder family. Subclasses fill in the class attributes."""

    name: str
    vision_model_type: str          # the vision tower's config model_type
    text_model_type: str            # the text (prompt) tower's config model_type
    dual_model_type: str            # the paired dual encoder's config model_type (what convert reads)
    text_class: type                # transformers class of the text tower (its output is projected)
    dual_class: type                # transformers class of the dual encoder `convert` reads the towers from
    patch_projection: type          # nn.Module mapping patch tokens into the text space
    position_embedding_path: str    # the text tower's position table, as a submodule path
    pad_prompts_to_max: bool        # tokenize prompts to max length (SigLIP) or to the longest (CLIP)
    dual_rules: tuple[Rule, ...]    # where `convert` puts each tensor of the dual model (model/mapping.py)

    def text_dim(self, text_config) -> int:
        raise NotImplementedError

    def patch_dim(self, vision_config) -> int | None:
        """Width of the projected patch tokens; None where the projection is built to the text width."""
        raise NotImplementedError

    def build_patch_projection(self, config) -> nn.Module:
        """The patch projection of a PPLLaVAConfig."""
        return self.patch_projection(config.vision_config)

    def vision_features(self, outputs, layer: int) -> torch.Tensor:
        """The vision tower's features PPLLaVA pools, read from a full forward's outputs (with
        output_hidden_states): hidden_states[layer] (what LLaVA's bases take). `feature_layer` computes the
        same without running the layers after it."""
        return outputs.hidden_states[layer]

    # -- the tower up to its feature layer -------------------------------------------------------
    def embed(self, tower, pixel_values: torch.Tensor) -> torch.Tensor:
        """hidden_states[0]: what the tower's first encoder layer reads."""
        return tower.embeddings(pixel_values)

    def encoder_layers(self, tower) -> nn.ModuleList:
        return tower.encoder.layers

    def run_layer(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return block(x, None)

    def finish(self, tower, x: torch.Tensor, layer: int) -> torch.Tensor:
        """The feature from the state after the feature layer (identity but for InternViT's -1)."""
        return x

    def feature_layer(self, tower, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
        """vision_features(tower(pixel_values, output_hidden_states=True), layer), bit for bit, running the
        embeddings and the encoder layers up to `layer` only: the later layers never run and no other layer's
        state is kept. Every parameter is read inside its own module's call (ZeRO-3 gathers a module's
        parameters then); each layer is called as a module, so gradient checkpointing still applies."""
        layers = self.encoder_layers(tower)
        x = self.embed(tower, pixel_values)
        for block in layers[:layer % (len(layers) + 1)]:
            x = self.run_layer(block, x)
        return self.finish(tower, x, layer)

    def text_embeds(self, tower, input_ids, attention_mask) -> torch.Tensor:
        """(B, L) prompt ids -> (B, C) pooled, projected text features."""
        raise NotImplementedError


class ClipFamily(TowerFamily):
    name, vision_model_type, text_model_type, dual_model_type = "clip", "clip_vision_model", "clip_text_model", "clip"
    text_class, dual_class, patch_projection = CLIPTextModelWithProjection, CLIPModel, CLIPPatchProjection
    position_embedding_path = "text_model.embeddings.position_embedding"
    pad_prompts_to_max = False
    dual_rules = (
        Rule("text_model.", "prompt_pooling.prompt_tower.text_model.", "CLIP text tower -> prompt tower"),
        Rule("text_projection.", "prompt_pooling.prompt_tower.text_projection.", "text projection -> prompt tower"),
        Rule("vision_model.post_layernorm.", "prompt_pooling.patch_projection.post_layernorm.",
             "vision post-LayerNorm -> per-patch projection"),
        Rule("visual_projection.", "prompt_pooling.patch_projection.visual_projection.",
             "visual projection -> per-patch projection"),
        SCALE,
        Rule("vision_model.", None, DUAL_VISION),
    )

    def text_dim(self, text_config):
        return text_config.projection_dim

    def patch_dim(self, vision_config):
        return vision_config.projection_dim

    def text_embeds(self, tower, input_ids, attention_mask):
        return tower(input_ids=input_ids, attention_mask=attention_mask).text_embeds

    def embed(self, tower, pixel_values):
        return tower.pre_layrnorm(tower.embeddings(pixel_values))


class SiglipFamily(TowerFamily):
    name, vision_model_type, text_model_type, dual_model_type = "siglip", "siglip_vision_model", "siglip_text_model", "siglip"
    text_class, dual_class, patch_projection = SiglipTextModel, SiglipModel, SiglipPatchProjection
    position_embedding_path = "embeddings.position_embedding"
    pad_prompts_to_max = True
    dual_rules = (
        Rule("text_model.", "prompt_pooling.prompt_tower.", "SigLIP text tower (with its head) -> prompt tower"),
        Rule("vision_model.post_layernorm.", "prompt_pooling.patch_projection.post_layernorm.",
             "vision post-LayerNorm -> per-patch projection"),
        Rule("vision_model.head.", "prompt_pooling.patch_projection.head.",
             "vision attention-pooling head -> per-patch projection"),
        SCALE, BIAS,
        Rule("vision_model.", None, DUAL_VISION),
    )

    def text_dim(self, text_config):
        return text_config.projection_size

    def patch_dim(self, vision_config):
        return vision_config.hidden_size

    def build_patch_projection(self, config):
        head = SiglipValueHead if config.siglip_patch_head == "value" else SiglipMultiheadAttentionPoolingHead
        return SiglipPatchProjection(config.vision_config, head)

    def text_embeds(self, tower, input_ids, attention_mask):
        # SigLIP was trained without an attention mask on max-length padded text, and pools the last
        # position; passing the mask would change every prompt's features.
        return tower(input_ids=input_ids).pooler_output


class InternVLFamily(ClipFamily):
    """InternViT (InternVL3) + a CLIP text tower aligned to it by `ppllava align` (model/aligned.py)."""
    name, vision_model_type, dual_model_type = "internvl", "internvl_vision", "ppllava_aligned_text"
    dual_class, patch_projection = AlignedTextTower, InternVLPatchProjection
    dual_rules = (
        Rule("text_tower.", "prompt_pooling.prompt_tower.", "aligned CLIP text tower -> prompt tower"),
        Rule("patch_projection.", "prompt_pooling.patch_projection.", "aligned patch projection"),
        SCALE, BIAS,
    )

    def patch_dim(self, vision_config):
        return None                                   # learned into the text space, whatever its width

    def build_patch_projection(self, config):
        return InternVLPatchProjection(config.vision_config, self.text_dim(config.prompt_config),
                                       merge=config.pixel_shuffle ** 2)

    def vision_features(self, outputs, layer):
        # as InternVL: the last layer is last_hidden_state (after the tower's final norm, when it has one)
        return outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]

    def embed(self, tower, pixel_values):
        return tower.embeddings(pixel_values)

    def encoder_layers(self, tower):
        return tower.encoder.layer

    def run_layer(self, block, x):
        return block(x)

    def finish(self, tower, x, layer):
        return tower.layernorm(x) if layer == -1 else x      # nn.Identity with use_mean_pooling


FAMILIES: dict[str, TowerFamily] = {f.name: f for f in (ClipFamily(), SiglipFamily(), InternVLFamily())}


def family_of_vision(model_type: str) -> TowerFamily:
    for family in FAMILIES.values():
        if family.vision_model_type == model_type:
            return family
    known = ", ".join(f.vision_model_type for f in FAMILIES.values())
    raise ValueError(f"unknown vision tower architecture {model_type!r}; supported: {known}")


def family_of_dual(model_type: str) -> TowerFamily:
    for family in FAMILIES.values():
        if family.dual_model_type == model_type:
            return family
    text_only = {f.text_model_type: f for f in FAMILIES.values()}
    if model_type in text_only or model_type.endswith("_with_projection"):
        raise ValueError(f"the text tower checkpoint is a bare {model_type!r}: it is missing the visual projection "
                         f"that maps patch tokens into the text space; pass the paired dual model "
                         f"({', '.join(f.dual_model_type for f in FAMILIES.values())}; for InternVL the folder "
                         f"`ppllava align` wrote) instead")
    known = ", ".join(f.dual_model_type for f in FAMILIES.values())
    raise ValueError(f"unknown text tower architecture {model_type!r}; supported dual models: {known}")

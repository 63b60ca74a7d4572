"""PPLLaVAForConditionalGeneration: vision tower -> prompt-guided pooling -> MLP projector -> LLM.

Visual inputs of one batch (images, crops of an image, several images, videos) travel as:
    pixel_values      (F, 3, S, S)  every frame / crop of every item, item after item
    visual_frames     (N,) long     frames (or crops) of each item; they sum to F
    visual_is_video   (N,) bool     video items pool with video_kernel, images (crops) with image_kernel
    visual_sample     (N,) long     the batch row each item belongs to, non-decreasing
    prompt_input_ids  (B, L)        the current user question of each row, tokenized for the prompt tower
Each item of T frames becomes config.visual_tokens(T, is_video) tokens, written in order into the
input_ids positions that hold config.image_token_id / video_token_id.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.activations import ACT2FN

from . import anyres
from .btadapter import BTAdapter
from .config import PPLLaVAConfig
from .llm_kernels import use_llm_kernels
from .pooling import PromptGuidedPooling

# parameter groups (by module prefix) and the config switch that makes each one train
PARAMETER_GROUPS = {
    "vision_tower": (("vision_tower.", "prompt_pooling.patch_projection."), "train_vision_tower"),
    "prompt_tower": (("prompt_pooling.prompt_tower.",), "train_prompt_tower"),
    "projector": (("multi_modal_projector.",), "train_projector"),
    "llm": (("language_model.",), "train_llm"),
    "btadapter": (("btadapter.",), "train_btadapter"),       # only in models that have one
}


class MultiModalProjector(nn.Module):
    """LLaVA's two-layer MLP (same parameter names, so LLaVA checkpoints load as they are); InternVL's adds a
    LayerNorm in front and takes pixel-shuffled tokens (4x the vision width)."""

    def __init__(self, config: PPLLaVAConfig):
        super().__init__()
        bias = config.multimodal_projector_bias
        width = config.vision_config.hidden_size * config.pixel_shuffle ** 2
        self.layer_norm = nn.LayerNorm(width) if config.projector_layer_norm else None
        self.linear_1 = nn.Linear(width, config.text_config.hidden_size, bias=bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.linear_2(self.act(self.linear_1(x)))


class PPLLaVAPreTrainedModel(PreTrainedModel):
    config_class = PPLLaVAConfig
    config: PPLLaVAConfig
    base_model_prefix = "ppllava"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True


class PPLLaVAForConditionalGeneration(PPLLaVAPreTrainedModel):
    def __init__(self, config: PPLLaVAConfig):
        super().__init__(config)
        if config.image_token_id is None:
            raise ValueError("config.image_token_id is not set: the LLM needs a placeholder token for visual tokens")
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.btadapter = (BTAdapter(config.vision_config, config.btadapter_depth, config.btadapter_max_frames,
                                    config.btadapter_drop_path) if config.btadapter_depth else None)
        self.prompt_pooling = PromptGuidedPooling(config)
        self.multi_modal_projector = MultiModalProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        # appended to single-frame images' tokens where the model was trained with it (config.image_newline)
        self.image_newline = nn.Parameter(torch.zeros(config.text_config.hidden_size)) if config.image_newline else None
        use_llm_kernels(self.language_model, config.npu_fused_kernels, impl="npu")
        self.post_init()

    # -- embeddings (so resize_token_embeddings and friends reach the LLM) ------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    # -- training switches -------------------------------------------------------------------------
    def _groups(self) -> dict[str, tuple[tuple[str, ...], str]]:
        groups = {g: v for g, v in PARAMETER_GROUPS.items() if g != "btadapter" or self.btadapter is not None}
        if self.image_newline is not None:            # the LLM-space token trains with the projector
            groups["projector"] = (groups["projector"][0] + ("image_newline",), groups["projector"][1])
        return groups

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters of each group: vision_tower, prompt_tower, projector, llm (and btadapter)."""
        table = self._groups()
        groups = {name: [] for name in table}
        for pname, param in self.named_parameters():
            group = next(g for g, (prefixes, _) in table.items() if pname.startswith(prefixes))
            groups[group].append((pname, param))
        return groups

    def apply_trainable(self) -> dict[str, bool]:
        """Set requires_grad from config.train_*; returns which groups train."""
        trains = {group: bool(getattr(self.config, switch)) for group, (_, switch) in self._groups().items()}
        for group, params in self.parameter_groups().items():
            for _, param in params:
                param.requires_grad_(trains[group])
        return trains

    # -- visual path ------------------------------------------------------------------------------
    def vision_patches(self, pixel_values: torch.Tensor, visual_frames=None) -> torch.Tensor:
        """(F, 3, S, S) -> (F, g, g, Dv): hidden_states[vision_feature_layer], CLS dropped for 'default' (the
        tower runs up to that layer only: TowerFamily.feature_layer);
        with pixel_shuffle s > 1, (F, g/s, g/s, s*s*Dv) as InternVL merges patches.

        `visual_frames`: frames of each item (they sum to F), which a BT-Adapter encodes together; without
        it the F frames are one item."""
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        if self.btadapter is not None:
            features = self._adapted_features(pixel_values, visual_frames)
        else:
            features = self.prompt_pooling.family.feature_layer(self.vision_tower, pixel_values,
                                                                self.config.vision_feature_layer)
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        g = self.config.native_grid
        if features.shape[1] != g * g:
            raise ValueError(f"pixel_values: {tuple(pixel_values.shape[-2:])} frames give {features.shape[1]} patches, "
                             f"expected {g}x{g} (image_size {self.config.vision_config.image_size})")
        return pixel_shuffle(features.reshape(features.shape[0], g, g, features.shape[-1]), self.config.pixel_shuffle)

    def _adapted_features(self, pixel_values: torch.Tensor, visual_frames) -> torch.Tensor:
        """The BT-Adapter tower's feature layer, items of one length encoded as one batch of videos."""
        frames = [pixel_values.shape[0]] if visual_frames is None else [int(f) for f in visual_frames]
        if sum(frames) != pixel_values.shape[0]:
            raise ValueError(f"visual_frames {frames} must sum to the {pixel_values.shape[0]} frames in pixel_values")
        starts = [0, *itertools.accumulate(frames)]
        out: list[torch.Tensor | None] = [None] * len(frames)
        for t in dict.fromkeys(frames):
            items = [i for i, f in enumerate(frames) if f == t]
            index = torch.cat([torch.arange(starts[i], starts[i] + t) for i in items]).to(pixel_values.device)
            state = self.btadapter(self.vision_tower, pixel_values.index_select(0, index), t,
                                   self.config.vision_feature_layer)
            for j, i in enumerate(items):
                out[i] = state[j * t:(j + 1) * t]
        return torch.cat(out)

    def encode_visuals(self, pixel_values, visual_frames, visual_is_video, visual_sample,
                       prompt_input_ids, prompt_attention_mask=None, patches=None,
                       visual_image_size=None) -> list[torch.Tensor]:
        """The LLM-space tokens of every visual item, in item order: a list of (N_i, D_llm).

        `patches`: vision_patches(pixel_values) computed before (a chat about one video encodes its frames
        once; each question pools them anew), then pixel_values may be None. `visual_image_size` (N, 2): the
        (height, width) of each anyres image item (config.image_grid_pinpoints), 0 for the others."""
        guided = self.config.pooling_mode == "prompt"
        frames, videos, samples = _check_visual_inputs(pixel_values if patches is None else patches, visual_frames,
                                                       visual_is_video, visual_sample, prompt_input_ids, guided)
        sizes = [None if visual_image_size is None or not int(visual_image_size[i].min()) else
                 tuple(int(v) for v in visual_image_size[i]) for i in range(len(frames))]
        if patches is None:          # each module runs once, in this order; an anyres image's crops are not a video
            together = [n for t, v, size in zip(frames, videos, sizes)
                        for n in ([1] * t if self.config.anyres_grid(t, v, size) else [t])]
            patches = self.vision_patches(pixel_values, together)
        if guided:
            text = self.prompt_pooling.encode_prompt(prompt_input_ids, prompt_attention_mask)
            embeds = self.prompt_pooling.embed_patches(patches)
        x = self.multi_modal_projector(patches) if self.config.project_before_pooling else patches
        starts = [0, *itertools.accumulate(frames)]
        groups: dict[tuple[bool, int], list[int]] = {}
        for i, key in enumerate(zip(videos, frames)):
            groups.setdefault(key, []).append(i)
        tokens: list[torch.Tensor | None] = [None] * len(frames)
        for (is_video, t), items in groups.items():      # items of one kind and length pool as one batch
            index = torch.cat([torch.arange(starts[i], starts[i] + t) for i in items]).to(patches.device)
            xs = x.index_select(0, index).unflatten(0, (len(items), t))
            if guided:
                e = embeds.index_select(0, index).unflatten(0, (len(items), t))
                pooled = self.prompt_pooling.pool(e, text[[samples[i] for i in items]], xs, is_video)
            else:
                pooled = self.prompt_pooling.pool_unguided(xs, is_video)
            pooled = pooled.flatten(1, 3)
            for j, i in enumerate(items):
                tokens[i] = pooled[j]
        if not self.config.project_before_pooling:
            tokens = list(self.multi_modal_projector(torch.cat(tokens)).split([len(t) for t in tokens]))
        if self.image_newline is not None:
            tokens = [self._with_newlines(tok, t, v, size) for tok, t, v, size in zip(tokens, frames, videos, sizes)]
            if self.image_newline.requires_grad and torch.is_grad_enabled() and tokens \
                    and not any(self.config.appends_newline(t, v) or self.config.anyres_grid(t, v, size)
                                for t, v, size in zip(frames, videos, sizes)):
                # no single image here: an empty slice of it still gives it a (zero) gradient, as DeepSpeed's ZeRO
                # needs every trainable parameter's gradient on every process (else its reductions mismatch)
                tokens[0] = torch.cat([tokens[0], self.image_newline[None][:0].to(tokens[0].dtype)])
        return tokens

    def _with_newlines(self, tokens: torch.Tensor, frames: int, is_video: bool, image_size) -> torch.Tensor:
        """An item's tokens as the LLM reads them: an anyres image laid out with a newline per row, a single
        image followed by one newline, the others as they are."""
        grid = self.config.anyres_grid(frames, is_video, image_size)
        if grid is not None:
            side = math.isqrt(tokens.shape[0] // frames)
            return anyres.layout(tokens.reshape(frames, side, side, -1), grid, image_size, self.image_newline)
        if self.config.appends_newline(frames, is_video):
            return torch.cat([tokens, self.image_newline[None].to(tokens.dtype)])
        return tokens

    def placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids == self.config.image_token_id
        if self.config.video_token_id is not None:
            mask |= input_ids == self.config.video_token_id
        return mask

    def embed_inputs(self, input_ids, pixel_values=None, visual_frames=None, visual_is_video=None,
                     visual_sample=None, prompt_input_ids=None, prompt_attention_mask=None,
                     patches=None, visual_image_size=None) -> torch.Tensor:
        """LLM input embeddings with every visual placeholder replaced by its visual token."""
        embeds = self.get_input_embeddings()(input_ids)
        mask = self.placeholder_mask(input_ids)
        if pixel_values is None and patches is None:
            if bool(mask.any()):
                raise ValueError(f"input_ids hold {int(mask.sum())} visual placeholder tokens but no pixel_values were given")
            return embeds
        tokens = self.encode_visuals(pixel_values, visual_frames, visual_is_video, visual_sample,
                                     prompt_input_ids, prompt_attention_mask, patches, visual_image_size)
        _check_placeholders(mask, tokens, visual_sample)
        return embeds.masked_scatter(mask.unsqueeze(-1), torch.cat(tokens).to(embeds.dtype))

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, visual_frames=None,
                visual_is_video=None, visual_sample=None, prompt_input_ids=None, prompt_attention_mask=None,
                inputs_embeds=None, labels=None, patches=None, visual_image_size=None, **kwargs):
        """Causal-LM forward; labels at visual placeholder positions are ignored (set to -100)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, visual_frames, visual_is_video, visual_sample,
                                              prompt_input_ids, prompt_attention_mask, patches, visual_image_size)
        if labels is not None and input_ids is not None:
            labels = labels.masked_fill(self.placeholder_mask(input_ids), -100)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, pixel_values=None, visual_frames=None, visual_is_video=None,
                 visual_sample=None, prompt_input_ids=None, prompt_attention_mask=None, patches=None,
                 visual_image_size=None, **generate_kwargs):
        """Encode the visuals once, then let the LLM generate from the merged embeddings.

        Returns input_ids followed by the generated tokens, as transformers' generate() does."""
        embeds = self.embed_inputs(input_ids, pixel_values, visual_frames, visual_is_video, visual_sample,
                                   prompt_input_ids, prompt_attention_mask, patches, visual_image_size)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        new = self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


def pixel_shuffle(patches: torch.Tensor, s: int) -> torch.Tensor:
    """(F, g, g, D) -> (F, g/s, g/s, s*s*D): each s x s block of patches as one token, channels patch-major
    (row offset, then column offset, then D), exactly as InternVL's pixel_shuffle(scale_factor=1/s)."""
    if s == 1:
        return patches
    n, rows, cols, d = patches.shape
    x = patches.reshape(n, rows, cols // s, d * s).permute(0, 2, 1, 3)
    x = x.reshape(n, cols // s, rows // s, d * s * s).permute(0, 2, 1, 3)
    return x.contiguous()


def _check_visual_inputs(pixel_values, visual_frames, visual_is_video, visual_sample, prompt_input_ids, guided=True):
    """Validate the visual batch; returns python lists (frames, is_video, sample) per item."""
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values: expected (F, 3, S, S), got shape {tuple(pixel_values.shape)}")
    if prompt_input_ids is None and not guided:
        prompt_input_ids = visual_sample.new_zeros(int(visual_sample.max()) + 1 if len(visual_sample) else 1, 1)
    if prompt_input_ids is None:
        raise ValueError("prompt_input_ids are required with pixel_values: the pooling is guided by the user's question")
    n = len(visual_frames) if visual_frames is not None else None
    for name, value in (("visual_is_video", visual_is_video), ("visual_sample", visual_sample)):
        if value is None or visual_frames is None or len(value) != n:
            raise ValueError(f"visual_frames, visual_is_video and visual_sample must be given, one entry per visual item "
                             f"({name} has {None if value is None else len(value)}, visual_frames {n})")
    frames = [int(f) for f in visual_frames.tolist()]
    videos = [bool(v) for v in visual_is_video.tolist()]
    samples = [int(s) for s in visual_sample.tolist()]
    if min(frames, default=1) < 1 or sum(frames) != pixel_values.shape[0]:
        raise ValueError(f"visual_frames {frames} must be >= 1 and sum to the {pixel_values.shape[0]} frames in pixel_values")
    rows = prompt_input_ids.shape[0]
    if any(not 0 <= s < rows for s in samples) or samples != sorted(samples):
        raise ValueError(f"visual_sample {samples} must be non-decreasing batch rows in 0..{rows - 1}")
    return frames, videos, samples


def _check_placeholders(mask: torch.Tensor, tokens: list[torch.Tensor], visual_sample: torch.Tensor) -> None:
    have = mask.sum(dim=1).tolist()
    want = [0] * mask.shape[0]
    for item_tokens, row in zip(tokens, visual_sample.tolist()):
        want[row] += item_tokens.shape[0]
    if have != want:
        raise ValueError(f"visual placeholder tokens per batch row {have} do not match the visual tokens the items "
                         f"produce {want}: expand each item's placeholder to config.visual_tokens(frames, is_video)")

"""PPLLaVAConfig: the vision tower, the prompt (CLIP/SigLIP text) tower, the LLM, and the pooling.

Sub-configs are transformers configs: `vision_config` (clip_vision_model / siglip_vision_model /
internvl_vision), `prompt_config` (the paired clip_text_model / siglip_text_model, or the CLIP text
tower aligned to InternViT by `ppllava align`; positions already extended) and
`text_config` (the LLM: llama, qwen2, ...; named as in transformers' LLaVA so tooling finds it).
"""

from __future__ import annotations

import math
from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from backends.llm_kernels import KERNELS as FUSED_KERNELS
from backends.ops.pooling import output_size

from . import anyres
from .towers import family_of_vision

VIDEO_KERNEL = [2, 3, 3]
IMAGE_KERNEL = [1, 3, 3]


def side(size) -> int:
    """One side of a square image or patch size (InternVL's configs give [height, width])."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"only square images and patches are supported, got {list(size)}")
        return int(size[0])
    return int(size)


class PPLLaVAConfig(PreTrainedConfig):
    model_type = "ppllava"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "prompt_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_text_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    prompt_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    # which vision features reach the pooling: hidden_states[vision_feature_layer]; "default" drops CLS
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    # patches merged per side into one token before pooling, as InternVL's pixel shuffle does (its
    # downsample_ratio 0.5 is 2: 2x2 patches -> one token of 4x the channels); 1 for LLaVA's bases
    pixel_shuffle: int = 1
    # prompt-guided pooling; strides default to the kernels
    video_kernel: list[int] | None = None
    video_stride: list[int] | None = None
    image_kernel: list[int] | None = None
    image_stride: list[int] | None = None
    pooling_temperature: float = 0.01
    # a visual token budget for videos (None, None: the fixed kernels above, for every length). The pooled size of
    # a video of T frames is a target (T', H', W') (`video_pooled_size`; a video of fewer than T' frames keeps one
    # token row per frame), or at most `video_max_tokens` tokens (the fixed kernels while they fit; else T' =
    # N // (H' W') at the fixed kernels' H', W', which shrink to a square of at most N only when one pooled frame is
    # over). Each axis whose size differs from the fixed kernels' gets stride T // T' and kernel T - (T' - 1) *
    # stride, as the authors' get_size(output_size=...) derives them; the other axes keep the fixed kernel
    video_pooled_size: list[int] | None = None
    video_max_tokens: int | None = None
    # "prompt" (PPLLaVA), or the baselines the paper compares with: "average" (avg_pool3d with the same
    # kernels, no prompt tower) and "none" (every patch token reaches the LLM)
    pooling_mode: Literal["prompt", "average", "none"] = "prompt"
    # exp(logit_scale) of the dual encoder (100 for OpenAI CLIP); `convert` copies it, it never trains
    relevance_scale: float = 100.0
    # project with the MLP before pooling (the original checkpoints; 18x the projector compute) or after
    project_before_pooling: bool = False
    # the authors' BT-Adapter on a CLIP vision tower (model/btadapter.py): a temporal + spatial branch after each
    # of the last `btadapter_depth` layers (0: none); `btadapter_max_frames` rows of its time embedding (their
    # max_T); stochastic depth in training as theirs (temporal layers at the rate, spatial 0..rate)
    btadapter_depth: int = 0
    btadapter_max_frames: int = 64
    btadapter_drop_path: float = 0.1
    # SigLIP's per-patch head: "attention" runs its pooling head on each patch as a one-token sequence
    # (out_proj(v_proj(x)), then the MLP); "value" is the authors' head (v_proj(x), no out_proj, then the MLP)
    siglip_patch_head: Literal["attention", "value"] = "attention"
    # one learned token after each single-frame image's pooled tokens, as the authors' LLaVA-NeXT path appends
    # image_newline (multi-frame image items, their multi-image samples, get none)
    image_newline: bool = False
    # LLaVA-NeXT's anyres images (model/anyres.py): the grid resolutions (height, width) an image item of
    # 1 + rows*cols crops with an image size was cut to; its pooled crops are laid out, unpadded, a newline per row
    image_grid_pinpoints: list[list[int]] | None = None
    # frames: "crop" (short side to the tower's size, centre crop) or "squash" (resized to a square, as the
    # authors' video processor does); None: the tower family's preset (data/preprocess.py)
    frame_resize: Literal["crop", "squash"] | None = None
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    projector_layer_norm: bool = False           # InternVL's projector opens with a LayerNorm
    # placeholder tokens in the LLM's input_ids, each replaced by one visual token
    image_token_id: int | None = None
    video_token_id: int | None = None
    # the base's image normalisation where it differs from its tower family's preset (data/preprocess.py)
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    # tokens around each item's placeholder run, as InternVL writes <img> ... </img>; None for LLaVA's bases
    visual_start_token_id: int | None = None
    visual_end_token_id: int | None = None
    # (keep, stretch) of the prompt tower's context extension, None if its positions are the pretrained ones
    prompt_context_extension: list[int] | None = None
    # prompt positions below this keep their values in training (the pretrained rows, as Long-CLIP and the
    # authors' code keep them: model/context.py FrozenRowsEmbedding); 0: the whole table trains
    prompt_frozen_positions: int = 0
    default_frames: int | None = None            # frames per video it was trained with (ppllava train writes it)
    # parameter groups that train (the vision tower and its patch projection are frozen by default)
    train_vision_tower: bool = False
    train_prompt_tower: bool = True
    train_projector: bool = True
    train_btadapter: bool = True                 # the BT-Adapter trains (as the authors'), when there is one
    train_llm: bool = True
    # torch_npu's fused kernels in the LLM: any of "rms_norm", "rotary", "attention" (needs torch_npu; each has a
    # native twin). Off until measured on a 910B; a choice of the machine that runs the model, so exports drop it
    npu_fused_kernels: list[str] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.video_kernel = list(self.video_kernel or VIDEO_KERNEL)
        self.image_kernel = list(self.image_kernel or IMAGE_KERNEL)
        self.check()

    # -- derived facts -------------------------------------------------------------------------
    def tower_family(self):
        return family_of_vision(self.vision_config.model_type)

    @property
    def native_grid(self) -> int:
        """Patches per side the vision tower makes of one frame: image_size // patch_size."""
        return side(self.vision_config.image_size) // side(self.vision_config.patch_size)

    @property
    def patch_grid(self) -> int:
        """Tokens per side of one frame that reach the pooling (CLIP-L/336: 24, SigLIP/384: 27, InternViT/448
        after its pixel shuffle: 16)."""
        return self.native_grid // self.pixel_shuffle

    @property
    def video_budget(self) -> bool:
        """Whether videos pool to a budget (video_pooled_size or video_max_tokens) rather than the fixed kernels."""
        return self.video_pooled_size is not None or self.video_max_tokens is not None

    def pooling_geometry(self, is_video: bool, frames: int | None = None) -> tuple[list[int], list[int]]:
        """(kernel, stride) of an item; a video of `frames` frames under a token budget gets its own (the fixed
        ones without a budget, or without `frames`)."""
        kernel = self.video_kernel if is_video else self.image_kernel
        stride = (self.video_stride if is_video else self.image_stride) or kernel
        if not is_video or frames is None or not self.video_budget:
            return list(kernel), list(stride)
        size = (frames, self.patch_grid, self.patch_grid)
        fixed = output_size(size, kernel, stride)
        derived_kernel, derived_stride = [], []
        for n, target, have, k, s in zip(size, self.pooled_size(frames), fixed, kernel, stride):
            if target == have:
                derived_kernel.append(k), derived_stride.append(s)
            else:                                                # the authors' get_size, output_size mode
                derived_stride.append(n // target)
                derived_kernel.append(n - (target - 1) * (n // target))
        return derived_kernel, derived_stride

    def pooled_size(self, frames: int) -> tuple[int, int, int]:
        """(T', H', W') a video of `frames` frames pools to."""
        g = self.patch_grid
        if self.video_pooled_size is not None:
            return tuple(min(o, n) for o, n in zip(self.video_pooled_size, (frames, g, g)))
        kernel, stride = self.pooling_geometry(True)
        t, h, w = output_size((frames, g, g), kernel, stride)
        if self.video_max_tokens is None:
            return t, h, w
        budget = self.video_max_tokens
        if min(h, w) < 1:                                        # a frame smaller than the kernel: visual_tokens says so
            return t, h, w
        if h * w > budget:                                       # one pooled frame is already over: a smaller square
            h = w = min(h, w, math.isqrt(budget))
        return min(max(t, 1), budget // (h * w)), h, w

    def min_video_frames(self) -> int:
        """The fewest frames a video may have: the fixed temporal kernel's, any under a budget."""
        return 1 if self.video_budget else self.pooling_geometry(True)[0][0]

    def visual_tokens(self, frames: int, is_video: bool, image_size: tuple[int, int] | None = None) -> int:
        """Tokens the LLM receives for one item of `frames` frames (or crops, for an image; an anyres image
        of 1 + rows*cols crops also needs its (height, width))."""
        grid = self.anyres_grid(frames, is_video, image_size)
        if grid is not None:                         # each crop pools to a square of side tokens per side
            side = math.isqrt(self.visual_tokens(1, False) - int(self.appends_newline(1, False)))
            return anyres.tokens(grid, side, image_size)
        newline = int(self.appends_newline(frames, is_video))
        if self.pooling_mode == "none":
            return frames * self.patch_grid ** 2 + newline
        kernel, stride = self.pooling_geometry(is_video, frames)
        t, h, w = output_size((frames, self.patch_grid, self.patch_grid), kernel, stride)
        if min(t, h, w) < 1:
            kind = "video" if is_video else "image"
            raise ValueError(f"a {kind} of {frames} frame(s) of {self.patch_grid}x{self.patch_grid} patches is smaller "
                             f"than the pooling kernel {kernel}")
        return t * h * w + newline

    def appends_newline(self, frames: int, is_video: bool) -> bool:
        """Whether an item's tokens end with image_newline: single-frame images of a model that has one."""
        return bool(self.image_newline) and not is_video and frames == 1

    def anyres_grid(self, frames: int, is_video: bool, image_size) -> tuple[int, int] | None:
        """(rows, columns) of an anyres image item; None for every other item."""
        if is_video or image_size is None or not self.image_grid_pinpoints or frames == 1:
            return None
        grid = anyres.grid_shape(tuple(image_size), self.image_grid_pinpoints, side(self.vision_config.image_size))
        if 1 + grid[0] * grid[1] != frames:
            raise ValueError(f"an image of {tuple(image_size)} is cut into 1 + {grid[0]}x{grid[1]} crops, "
                             f"got {frames}")
        return grid

    def placeholders(self, frames: int, is_video: bool, image_size: tuple[int, int] | None = None) -> list[int]:
        """The input_ids run that stands for one item: one placeholder per visual token it becomes, between the
        start and end tokens where the base has them."""
        token = self.video_token_id if is_video and self.video_token_id is not None else self.image_token_id
        run = [token] * self.visual_tokens(frames, is_video, image_size)
        if self.visual_start_token_id is not None:
            run = [self.visual_start_token_id, *run, self.visual_end_token_id]
        return run

    # -- validation ----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise ValueError naming the first mismatch between the sub-configs and the pooling settings."""
        family = self.tower_family()
        if self.prompt_config.model_type != family.text_model_type:
            raise ValueError(f"prompt tower {self.prompt_config.model_type!r} does not pair with vision tower "
                             f"{self.vision_config.model_type!r} (expected {family.text_model_type!r})")
        text_dim, patch_dim = family.text_dim(self.prompt_config), family.patch_dim(self.vision_config)
        if patch_dim is not None and text_dim != patch_dim:
            raise ValueError(f"prompt tower projects to {text_dim} dims but the vision patch projection gives "
                             f"{patch_dim}: the relevance map needs both in one space")
        layers = self.vision_config.num_hidden_layers
        if not -(layers + 1) <= self.vision_feature_layer <= layers:
            raise ValueError(f"vision_feature_layer {self.vision_feature_layer} is outside the vision tower's "
                             f"hidden states (-{layers + 1}..{layers})")
        if isinstance(self.pixel_shuffle, bool) or not isinstance(self.pixel_shuffle, int) or self.pixel_shuffle < 1 \
                or self.native_grid % self.pixel_shuffle:
            raise ValueError(f"pixel_shuffle must be a positive int dividing the {self.native_grid} patches per side, "
                             f"got {self.pixel_shuffle!r}")
        if self.pooling_mode not in ("prompt", "average", "none"):
            raise ValueError(f"pooling_mode must be 'prompt', 'average' or 'none', got {self.pooling_mode!r}")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', "
                             f"got {self.vision_feature_select_strategy!r}")
        for name in ("video_kernel", "video_stride", "image_kernel", "image_stride"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or not all(isinstance(v, int) and v > 0 for v in value)):
                raise ValueError(f"{name} must be three positive ints (t, h, w), got {value}")
        if self.video_pooled_size is not None and self.video_max_tokens is not None:
            raise ValueError("give video_pooled_size or video_max_tokens, not both")
        size = self.video_pooled_size
        if size is not None and (not isinstance(size, (list, tuple)) or len(size) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ValueError(f"video_pooled_size must be three positive ints (T', H', W'), got {size!r}")
        if size is not None and max(size[1:]) > self.patch_grid:
            raise ValueError(f"video_pooled_size {list(size)}: H' and W' must be at most the {self.patch_grid} tokens "
                             f"per side of a frame")
        limit = self.video_max_tokens
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"video_max_tokens must be a positive int, got {limit!r}")
        if self.video_budget and self.pooling_mode == "none":
            raise ValueError("a video token budget (video_pooled_size / video_max_tokens) needs pooling; "
                             "pooling_mode is 'none'")
        for name in ("pooling_temperature", "relevance_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if isinstance(self.btadapter_depth, bool) or not isinstance(self.btadapter_depth, int) \
                or not 0 <= self.btadapter_depth <= layers:
            raise ValueError(f"btadapter_depth must be an int in 0..{layers} (the vision tower's layers), "
                             f"got {self.btadapter_depth!r}")
        if self.btadapter_depth and family.name != "clip":
            raise ValueError(f"the BT-Adapter is built for CLIP vision towers, not {self.vision_config.model_type!r}")
        if self.btadapter_depth and not (isinstance(self.btadapter_max_frames, int) and self.btadapter_max_frames > 0):
            raise ValueError(f"btadapter_max_frames must be a positive int, got {self.btadapter_max_frames!r}")
        if not 0 <= self.btadapter_drop_path < 1:
            raise ValueError(f"btadapter_drop_path must be in [0, 1), got {self.btadapter_drop_path}")
        if self.siglip_patch_head not in ("attention", "value"):
            raise ValueError(f"siglip_patch_head must be 'attention' or 'value', got {self.siglip_patch_head!r}")
        if isinstance(self.prompt_frozen_positions, bool) or not isinstance(self.prompt_frozen_positions, int) \
                or not 0 <= self.prompt_frozen_positions <= self.prompt_config.max_position_embeddings:
            raise ValueError(f"prompt_frozen_positions must be an int in 0..{self.prompt_config.max_position_embeddings}"
                             f", got {self.prompt_frozen_positions!r}")
        if self.frame_resize not in (None, "crop", "squash"):
            raise ValueError(f"frame_resize must be 'crop', 'squash' or null, got {self.frame_resize!r}")
        unknown = sorted(set(self.npu_fused_kernels or ()) - set(FUSED_KERNELS))
        if unknown:
            raise ValueError(f"npu_fused_kernels: unknown {unknown}; expected any of {', '.join(FUSED_KERNELS)}")
        vocab = self.text_config.vocab_size
        for name in ("image_token_id", "video_token_id", "visual_start_token_id", "visual_end_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < vocab:
                raise ValueError(f"{name} {value} is outside the LLM's vocabulary (0..{vocab - 1})")
        if (self.visual_start_token_id is None) != (self.visual_end_token_id is None):
            raise ValueError("visual_start_token_id and visual_end_token_id are set together or not at all")

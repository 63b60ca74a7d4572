"""An independent re-reading of the authors' PPLLaVA forward (farewellthree/PPLLaVA d5766c8), for tests.

    model = AuthorsModel(model_dir, text_tower=None, dtype=torch.float64)
    model.encode(media_type, pixel_values, clip_ids, clip_mask=None, image_size=None)
        -> {"relevance": (T, h, w), "pooled": (N, D_llm), "features": (N', D_llm), "blocks": [(n_i, D_llm), ...]}
    model.logits(input_ids, media, clip_ids, clip_mask=None) -> (L', vocab)
    model.vision_hidden_states(pixel_values)   the tuple their vision tower returns (hidden_states)
    model.text_embeds(clip_ids, clip_mask)     the normalised prompt embedding the relevance map uses
    model.position_table(length)               the extended text position rows their ExtendTextEmbeddings adds

It reads the authors' folder as their code does: config.json (their LlavaNextVidConfig / LlavaOnevisionVidConfig
fields) and every model*.safetensors by their key names; of the --text-tower folder only config.json, which their
projector's constructor reads through `clip_weight` (CLIPConfig._get_config_dict(clip_weight)) for the text
transformer's heads, activation, eps and eos id and the visual LayerNorm's eps. `text_tower` defaults to
config["clip_weight"] when that is a local folder (in a release it is a Hub id).

Everything is plain torch on CPU in `dtype` (float64 by default; their code ran in bf16 / fp16): the vision encoder
layers, the BT-Adapter, the text transformers, the SigLIP value head, the relevance softmax and the pooling are
written out here; only the LLM is transformers' (AutoModelForCausalLM fed inputs_embeds, as their forward does),
whose RMSNorm and rotary tables run in float32 whatever the dtype.

What each step computes, with the place in their code (ppllava/models/...):
  * media (llava_interleave.py encode_visual; llava_interleave_meta.py encode_image / encode_video):
    - "video": pixel_value (T, P=1, 3, S, S). With btadapter it is `.view(num_patches, num_frames, ...)` -> a 5-D
      (1, T, 3, S, S) batch, so the BT-Adapter's T is the video's frames; without, (T, 3, S, S).
      Pooled with pooling_kernel / pooling_stride, one relevance softmax over all T*h*w positions.
    - "image": pixel_value (1, P, 3, S, S) -> (P, 3, S, S), 4-D, so the adapter runs with T = 1 per crop; the
      projector is called with num_frames = P: one relevance softmax over all crops, pooled with
      image_pooling_kernel / stride (1,3,3), then LLaVA-NeXT's anyres layout: base crop, the others laid out by
      get_anyres_image_grid_shape(image_size, image_grid_pinpoints, vision_config.image_size), unpad_image (the
      4.45.2 one: int(), no round), image_newline after each row; a single crop gets one trailing image_newline.
    - "multi-image": encode_video(multi_image=True): the N images go through as a video (with btadapter the
      adapter's T is N: temporal attention across the images), pooled with the image kernel (video=False),
      one softmax over all N images; returned as N blocks of h*w tokens (each replaces one image token).
  * vision tower: hidden_states[vision_feature_layer], CLS dropped for "default".
    - BT-Adapter (clip_btadapter.py CLIPVisionTransformer_BTAdapter.forward / forward_patch / forward_BTAdapter /
      input_ini, CLIPLayer_Spatial, CLIPLayer_AttnTime): states up to the first adapted layer are CLIP's; from
      there on each state is cat(CLIP CLS, (CLIP patch + branch patch) / 2) per frame (get_combined_embedding),
      the last one included. The branch starts after CLIP layer total-depth with input_ini (btadapter_cls_token
      + CLIP position embeddings, btadapter_time_embed over frames, CLS = (mean over frames of CLIP CLS + that) / 2),
      then after each later CLIP layer adds (mean-over-frames CLIP CLS, CLIP patches in (l t) order) to the
      branch; each adapter layer is a temporal layer (attention over the T frames of each patch, residual through
      temporal_fc, CLS untouched) then a spatial layer (per-frame attention with the shared CLS, CLS output
      averaged over frames, MLP). Their LayerNorms are nn.LayerNorm(D) (eps 1e-5, not the config's).
    - SigLIP: transformers' SiglipVisionModel hidden states (no CLS; before post_layernorm).
  * relevance (llava_projector.py LLaVACLIP3DMultiModalProjector.forward / LLaVASiglip3DMultiModalProjector.forward):
    CLIP: clip_visual_projection(clip_visual_ln(f)); text = clip_text_projection(clip_text_model(ids, mask)[1]),
    the pooled output at the argmax id (eos_token_id == 2 in OpenAI's config) or else at the first eos.
    SigLIP: clip_visual_head(clip_visual_ln(f))[0] = v + MLP(LayerNorm(v)) with v the attention's value projection
    (siglip.py SiglipPoolingHead_PatchCLS / MultiheadAttention; out_proj and the probe do not enter); text =
    clip_text_model(ids, mask)[1], the last position's state through the text head. Both L2-normalised,
    softmax(cos * logit_scale.exp() [+ logit_bias]) over all positions of the item. valuew_plus multiplies by the
    head's head-averaged attention weights * 1000 (off in the releases).
  * text positions (clip.py ExtendTextEmbeddings.forward): rows below 20 of `position_embedding`, rows 20+ of
    `position_embedding_res`; CLIP text attention causal plus padding mask, SigLIP padding mask only.
  * projector MLP on every patch first, then utils.py weighted_adaptive_avg_pool3d_unfold: output (I - k) // s + 1
    per axis (leftovers dropped), each window softmax(relevance / pooling_temp) weighted sum; tokens (t, row, col).
  * merge (llava_interleave_meta.py _merge_input_ids_with_image_features): each image token replaced by its block;
    embeddings at positions whose id is pad_token_id are zeroed (their step 6); positions 0..L'-1; all attended.

Quirks of their code reproduced (computed as they compute):
  * CLIPLayer_AttnTime(config, T, layer_num=0.1) is called as CLIPLayer_AttnTime(configuration, dpr[i]): the drop
    rate lands in T (unused) and every temporal layer gets DropPath(0.1): inactive in eval, nothing to compute.
  * input_ini takes the branch CLS as `x[:B, 0]` of the (b t)-ordered rows: the first B frames' rows; all rows hold
    btadapter_cls_token + position 0, so it is that value.
  * CLIPVisionTransformer_BTAdapter.forward reads a 5-D input whose dim 1 is 3 as (B, C, T, H, W) and permutes: a
    3-frame video (or 3 images as multi-image) gets its frame and channel axes swapped before the patch embedding.
  * multi-image through the BT-Adapter attends across the images (T = N); an image's crops do not (T = 1).
  * the pad-token zeroing of step 6 applies to pad ids inside the prompt too.
Generalised here: their merge maps the i-th medium to batch row i, so a sample with two media does not run there;
`logits` takes the media of one sample in order, each image token taking the next block.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

KEEP = 20


# ------------------------------------------------------------------------------------------------ anyres helpers
# (transformers 4.45.2's image_processing_utils.select_best_resolution, llava_next get_anyres_image_grid_shape and
# unpad_image, which their encode_image imports; written out again)


def select_best_resolution(original_size, possible_resolutions):
    original_height, original_width = original_size
    best, best_effective, best_wasted = None, 0, float("inf")
    for height, width in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        effective = min(int(original_width * scale) * int(original_height * scale), original_width * original_height)
        wasted = width * height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (height, width), effective, wasted
    return best


def anyres_grid(image_size, pinpoints, crop_size):
    height, width = select_best_resolution([int(v) for v in image_size], pinpoints)
    return height // crop_size, width // crop_size


def unpad(tensor, original_size):
    """tensor (C, H, W) laid out from crops of a padded image of `original_size` (height, width): the rows or columns
    of the padding removed (4.45.2: int(), no rounding)."""
    original_height, original_width = [int(v) for v in original_size]
    current_height, current_width = tensor.shape[1:]
    if original_width / original_height > current_width / current_height:
        new_height = int(original_height * (current_width / original_width))
        pad = (current_height - new_height) // 2
        return tensor[:, pad:current_height - pad, :]
    new_width = int(original_width * (current_height / original_height))
    pad = (current_width - new_width) // 2
    return tensor[:, :, pad:current_width - pad]


# ------------------------------------------------------------------------------------------------ the model


def _act(name):
    from transformers.activations import ACT2FN
    return ACT2FN[name]


def _load_state(model_dir: Path) -> dict:
    from safetensors.torch import load_file
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors in {model_dir}")
    state = {}
    for name in files:
        state.update(load_file(model_dir / name))
    return state


class AuthorsModel:
    def __init__(self, model_dir, text_tower=None, dtype: torch.dtype = torch.float64):
        from transformers import CLIPConfig, CLIPVisionConfig, SiglipConfig, SiglipVisionConfig
        self.dir = Path(model_dir)
        self.dtype = dtype
        self.config = cfg = json.loads((self.dir / "config.json").read_text())
        if cfg.get("pooling", "avp") != "ppllava":
            raise ValueError(f"only pooling 'ppllava' is re-read here, not {cfg.get('pooling')!r}")
        self.qwen = bool(cfg.get("qwen", False))              # hasattr(self.config, "qwen") and self.config.qwen
        self.btadapter = bool(cfg.get("btadapter", False))
        raw = _load_state(self.dir)
        self.state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in raw.items()}

        vc = dict(cfg["vision_config"])
        vision_cls = SiglipVisionConfig if vc.get("model_type") == "siglip_vision_model" else CLIPVisionConfig
        self.vision = vision_cls(**{k: v for k, v in vc.items() if k not in ("depth", "max_T")})
        if self.btadapter and vision_cls is not CLIPVisionConfig:
            raise ValueError("their BT-Adapter is built on CLIP's vision transformer only")
        self.depth = vc.get("depth", cfg.get("btadapter_depth", 4))
        self.feature_layer = cfg["vision_feature_layer"]
        self.select = cfg["vision_feature_select_strategy"]
        self.frame_shape = tuple(cfg.get("frame_shape", (24, 24)))
        kernel, stride = cfg.get("pooling_kernel"), cfg.get("pooling_stride")
        self.video_kernel, self.video_stride = tuple(kernel), tuple(stride)
        self.image_kernel = tuple(cfg.get("image_pooling_kernel") or kernel)
        self.image_stride = tuple(cfg.get("image_pooling_stride") or stride)
        if cfg.get("pllava_pooling_shape") is not None:
            raise ValueError("pllava_pooling_shape (get_size's output_size mode) is not re-read here")
        self.temp = cfg.get("pooling_temp", 0.01)
        self.valuew_plus = bool(cfg.get("valuew_plus", False))
        self.image_token = cfg["image_token_index"]
        self.pad_token = cfg.get("pad_token_id") if cfg.get("pad_token_id") is not None else 0
        self.pinpoints = cfg.get("image_grid_pinpoints")
        self.projector_act = _act(cfg.get("projector_hidden_act", "gelu"))

        tower_dir = text_tower if text_tower is not None else cfg.get("clip_weight")
        if tower_dir is None or not (Path(tower_dir) / "config.json").exists():
            raise FileNotFoundError(f"the text tower's config (clip_weight {cfg.get('clip_weight')!r}) is not a local "
                                    "folder: pass text_tower=")
        tower = json.loads((Path(tower_dir) / "config.json").read_text())
        dual = (SiglipConfig if self.qwen else CLIPConfig)(**{k: v for k, v in tower.items()
                                                               if k in ("text_config", "vision_config",
                                                                        "projection_dim")})
        self.text = dual.text_config
        self.tower_vision_eps = dual.vision_config.layer_norm_eps
        self.text_eos = tower.get("text_config", {}).get("eos_token_id", self.text.eos_token_id)
        self._llm = None

    # -------------------------------------------------------------------- small pieces

    def W(self, name):
        return self.state[name]

    def _linear(self, prefix, x, bias=True):
        b = self.state.get(f"{prefix}.bias") if bias else None
        return F.linear(x, self.W(f"{prefix}.weight"), b)

    def _ln(self, prefix, x, eps):
        return F.layer_norm(x, x.shape[-1:], self.W(f"{prefix}.weight"), self.W(f"{prefix}.bias"), eps)

    def _attention(self, prefix, x, heads, mask=None):
        """Multi-head self-attention over dim 1 of x (B, L, D), q/k/v/out projections under `prefix`."""
        b, length, d = x.shape
        hd = d // heads

        def split(t):
            return t.view(b, length, heads, hd).transpose(1, 2)
        q = split(self._linear(f"{prefix}.q_proj", x))
        k = split(self._linear(f"{prefix}.k_proj", x))
        v = split(self._linear(f"{prefix}.v_proj", x))
        scores = (q @ k.transpose(-1, -2)) * hd ** -0.5
        if mask is not None:
            scores = scores + mask
        out = torch.softmax(scores, dim=-1) @ v
        return self._linear(f"{prefix}.out_proj", out.transpose(1, 2).reshape(b, length, d))

    def _mlp(self, prefix, x, act):
        return self._linear(f"{prefix}.fc2", act(self._linear(f"{prefix}.fc1", x)))

    def _encoder_layer(self, prefix, x, heads, eps, act, mask=None):
        """A pre-LN transformer layer (CLIP / SigLIP encoder layer)."""
        x = x + self._attention(f"{prefix}.self_attn", self._ln(f"{prefix}.layer_norm1", x, eps), heads, mask)
        return x + self._mlp(f"{prefix}.mlp", self._ln(f"{prefix}.layer_norm2", x, eps), act)

    # -------------------------------------------------------------------- vision tower

    def vision_hidden_states(self, pixel_values):
        """The hidden_states tuple their vision_tower(pixel_values, output_hidden_states=True) returns."""
        x = pixel_values.to(self.dtype)
        if self.btadapter:
            return self._btadapter_tower(x)
        return self._plain_tower(x)

    def _vision_layer(self, i, x):
        return self._encoder_layer(f"vision_tower.vision_model.encoder.layers.{i}", x,
                                   self.vision.num_attention_heads, self.vision.layer_norm_eps,
                                   _act(self.vision.hidden_act))

    def _plain_tower(self, x):
        v = "vision_tower.vision_model"
        patch = self.vision.patch_size
        siglip = self.vision.model_type == "siglip_vision_model"
        emb = F.conv2d(x, self.W(f"{v}.embeddings.patch_embedding.weight"),
                       self.state.get(f"{v}.embeddings.patch_embedding.bias"), stride=patch)
        emb = emb.flatten(2).transpose(1, 2)
        if not siglip:
            cls = self.W(f"{v}.embeddings.class_embedding").expand(emb.shape[0], 1, -1)
            emb = torch.cat([cls, emb], dim=1)
        h = emb + self.W(f"{v}.embeddings.position_embedding.weight")[:emb.shape[1]]
        if not siglip:
            h = self._ln(f"{v}.pre_layrnorm", h, self.vision.layer_norm_eps)
        states = [h]
        for i in range(self.vision.num_hidden_layers):
            h = self._vision_layer(i, h)
            states.append(h)
        return tuple(states)

    def _btadapter_tower(self, x):
        v = "vision_tower.vision_model"
        if x.ndim == 5:
            if x.shape[1] == 3:                    # their forward: read as (B, C, T, H, W), frames and channels swap
                x = x.permute(0, 2, 1, 3, 4)
            T = x.shape[1]
            x = x.reshape(-1, *x.shape[2:])
        else:
            T = 1
        # forward_embedding: patches + class embedding + position embeddings 0..num_patches
        emb = F.conv2d(x, self.W(f"{v}.embeddings.patch_embedding.weight"), stride=self.vision.patch_size)
        emb = emb.flatten(2).transpose(1, 2)
        cls = self.W(f"{v}.embeddings.class_embedding").expand(emb.shape[0], 1, -1)
        emb = torch.cat([cls, emb], dim=1)
        h = emb + self.W(f"{v}.embeddings.position_embedding.weight")[:emb.shape[1]]
        # forward_patch
        h = self._ln(f"{v}.pre_layrnorm", h, self.vision.layer_norm_eps)
        total, depth = self.vision.num_hidden_layers, self.depth
        branch, states = None, []
        for idx in range(total):
            states.append(h if branch is None else self._combine(h, branch, T))
            h = self._vision_layer(idx, h)
            if idx >= total - depth:
                branch = self._adapter_step(h, branch, idx + depth - total, T)
        states.append(self._combine(h, branch, T))
        return tuple(states)

    @staticmethod
    def _combine(x, branch, T):
        """get_combined_embedding: per frame, CLIP's CLS and the mean of CLIP's and the branch's patches."""
        bt, length, d = x.shape
        p = length - 1
        b = bt // T
        # b (p t) m -> (b t) p m
        branch_patches = branch[:, 1:].reshape(b, p, T, d).permute(0, 2, 1, 3).reshape(b * T, p, d)
        return torch.cat([x[:, :1], (x[:, 1:] + branch_patches) / 2], dim=1)

    def _adapter_step(self, x1, branch, num_layer, T):
        """forward_BTAdapter: x1 ((b t), 1 + p, d) is CLIP's output after the layer it follows."""
        bt, length, d = x1.shape
        b, p = bt // T, length - 1
        max_t = self.W("vision_tower.vision_model.btadapter_time_embed.weight").shape[0]
        if T > max_t:                                                  # their assert T <= num_embeddings
            raise AssertionError(f"{T} frames through the BT-Adapter, max_T is {max_t}")
        frames = x1.reshape(b, T, length, d)
        if branch is not None:
            cls = frames[:, :, 0].mean(dim=1, keepdim=True)
            patches = frames[:, :, 1:].permute(0, 2, 1, 3).reshape(b, p * T, d)      # b t l d -> b (l t) d
            x = branch + torch.cat([cls, patches], dim=1)
        else:
            x = frames
        if num_layer == 0:
            x = self._input_ini(x)
        x = self._temporal_layer(num_layer, x, T)
        return self._spatial_layer(num_layer, x, T)

    def _input_ini(self, x):
        v = "vision_tower.vision_model"
        cls_old = x[:, :, 0].mean(dim=1, keepdim=True)                                # (b, 1, d)
        patches = x[:, :, 1:]
        b, T, p, d = patches.shape
        rows = patches.reshape(b * T, p, d)
        cls_token = self.W(f"{v}.btadapter_cls_token").expand(b * T, 1, d)
        rows = torch.cat([cls_token, rows], dim=1) + self.W(f"{v}.embeddings.position_embedding.weight")[:p + 1]
        cls = rows[:b, 0].unsqueeze(1)                                                # their x[:B, 0]
        z = rows[:, 1:].reshape(b, T, p, d).permute(0, 2, 1, 3).reshape(b * p, T, d)  # (b t) l -> (b l) t
        z = z + self.W(f"{v}.btadapter_time_embed.weight")[:T]
        z = z.reshape(b, p * T, d)                                                    # (b l) t -> b (l t)
        return torch.cat([(cls_old + cls) / 2, z], dim=1)

    def _temporal_layer(self, i, x, T):
        """CLIPLayer_AttnTime: attention over the T frames of each patch; CLS passes through."""
        prefix = f"vision_tower.vision_model.btadapter_T_layers.{i}"
        cls, query = x[:, :1], x[:, 1:]
        b, pt, d = query.shape
        p = pt // T
        h = self._ln(f"{prefix}.layer_norm1", query.reshape(b * p, T, d), 1e-5)
        h = self._attention(f"{prefix}.self_attn", h, self.vision.num_attention_heads)
        h = self._linear(f"{prefix}.temporal_fc", h).reshape(b, p * T, d)
        return torch.cat([cls, query + h], dim=1)

    def _spatial_layer(self, i, x, T):
        """CLIPLayer_Spatial: per-frame attention with the shared CLS; CLS result averaged over frames; MLP."""
        prefix = f"vision_tower.vision_model.btadapter_S_layers.{i}"
        cls, query = x[:, :1], x[:, 1:]
        b, pt, d = query.shape
        p = pt // T
        frames = query.reshape(b, p, T, d).permute(0, 2, 1, 3).reshape(b * T, p, d)   # b (p t) -> (b t) p
        h = torch.cat([cls.unsqueeze(1).expand(b, T, 1, d).reshape(b * T, 1, d), frames], dim=1)
        h = self._attention(f"{prefix}.self_attn", self._ln(f"{prefix}.layer_norm1", h, 1e-5),
                            self.vision.num_attention_heads)
        cls_out = h[:, :1].reshape(b, T, 1, d).mean(dim=1)
        patches = h[:, 1:].reshape(b, T, p, d).permute(0, 2, 1, 3).reshape(b, p * T, d)  # (b t) p -> b (p t)
        x = x + torch.cat([cls_out, patches], dim=1)
        return x + self._mlp(f"{prefix}.mlp", self._ln(f"{prefix}.layer_norm2", x, 1e-5),
                             _act(self.vision.hidden_act))

    def selected_features(self, pixel_values):
        feature = self.vision_hidden_states(pixel_values)[self.feature_layer]
        return feature[:, 1:] if self.select == "default" else feature

    # -------------------------------------------------------------------- text tower

    def position_table(self, length):
        """ExtendTextEmbeddings: position_embedding rows < 20 and position_embedding_res rows >= 20."""
        e = "multi_modal_projector.clip_text_model.embeddings"
        if f"{e}.position_embedding.weight" in self.state:                      # extend_clip false: the plain table
            return self.W(f"{e}.position_embedding.weight")[:length]
        low, res = self.W(f"{e}.position_embedding")[:length], self.W(f"{e}.position_embedding_res")[:length]
        keep = (torch.arange(length) < KEEP).to(low.dtype)[:, None]
        return low * keep + res * (1 - keep)

    def _text_pooled(self, ids, mask):
        """clip_text_model(input_ids=ids, attention_mask=mask)[1]: (1, D_text)."""
        t = "multi_modal_projector.clip_text_model"
        length = ids.shape[1]
        h = self.W(f"{t}.embeddings.token_embedding.weight")[ids] + self.position_table(length)
        neg = torch.finfo(self.dtype).min
        additive = torch.zeros(1, 1, length, length, dtype=self.dtype)
        if not self.qwen:                                                           # CLIP: causal
            additive = additive + torch.triu(torch.full((length, length), neg, dtype=self.dtype), 1)
        if mask is not None:
            additive = additive + (1.0 - mask.to(self.dtype))[:, None, None, :] * neg
        act = _act(self.text.hidden_act)
        for i in range(self.text.num_hidden_layers):
            h = self._encoder_layer(f"{t}.encoder.layers.{i}", h, self.text.num_attention_heads,
                                    self.text.layer_norm_eps, act, additive)
        h = self._ln(f"{t}.final_layer_norm", h, self.text.layer_norm_eps)
        if self.qwen:
            return self._linear(f"{t}.head", h[:, -1])
        if self.text_eos == 2:
            where = ids.argmax(dim=-1)
        else:
            where = (ids == self.text_eos).int().argmax(dim=-1)
        return h[torch.arange(h.shape[0]), where]

    def text_embeds(self, clip_ids, clip_mask=None):
        ids = clip_ids.reshape(1, -1).long()
        mask = None if clip_mask is None else clip_mask.reshape(1, -1)
        pooled = self._text_pooled(ids, mask)
        if not self.qwen:
            pooled = self._linear("multi_modal_projector.clip_text_projection", pooled, bias=False)
        return pooled / pooled.norm(p=2, dim=-1, keepdim=True)

    # -------------------------------------------------------------------- projector

    def _patch_embeds(self, features):
        """(frames, L, D_v) -> (frames, L, P) patch embeddings and (SigLIP) the head's head-mean attention."""
        p = "multi_modal_projector"
        x = self._ln(f"{p}.clip_visual_ln", features, self.tower_vision_eps)
        if not self.qwen:
            return self._linear(f"{p}.clip_visual_projection", x, bias=False), None
        h = f"{p}.clip_visual_head"
        d = x.shape[-1]
        w, b = self.W(f"{h}.attention.in_proj_weight"), self.W(f"{h}.attention.in_proj_bias")
        value = F.linear(x, w[2 * d:], b[2 * d:])
        out = value + self._mlp(f"{h}.mlp", self._ln(f"{h}.layernorm", value, self.vision.layer_norm_eps),
                                _act(self.vision.hidden_act))
        heads, hd = self.vision.num_attention_heads, d // self.vision.num_attention_heads
        q = F.linear(self.W(f"{h}.probe"), w[:d], b[:d]).reshape(heads, hd)
        k = F.linear(x, w[d:2 * d], b[d:2 * d]).reshape(x.shape[0], x.shape[1], heads, hd)
        attn = torch.softmax(torch.einsum("hc,flhc->fhl", q / hd ** 0.5, k), dim=-1).mean(dim=1)
        return out, attn

    def relevance(self, features, clip_ids, clip_mask=None):
        """features (T, h*w, D_v) -> (T, h, w): one softmax over all positions."""
        T = features.shape[0]
        g0, g1 = self.frame_shape
        embeds, head_attn = self._patch_embeds(features)
        embeds = embeds.reshape(T * embeds.shape[1], -1)
        embeds = embeds / embeds.norm(p=2, dim=-1, keepdim=True)
        cos = embeds @ self.text_embeds(clip_ids, clip_mask)[0]
        logits = cos * self.W("multi_modal_projector.logit_scale").reshape(()).exp()
        if self.qwen:
            logits = logits + self.W("multi_modal_projector.logit_bias").reshape(())
        rel = torch.softmax(logits, dim=-1).reshape(T, g0, g1)
        if self.valuew_plus and head_attn is not None:
            rel = head_attn.reshape(T, g0, g0) * rel * 1000
        return rel

    def project(self, features):
        p = "multi_modal_projector"
        return self._linear(f"{p}.linear_2", self.projector_act(self._linear(f"{p}.linear_1", features)))

    def pool(self, x, weights, kernel, stride):
        """weighted_adaptive_avg_pool3d_unfold with kernel and stride: x (T, H, W, D), weights (T, H, W) ->
        (oT, oH, oW, D); each window's weights softmax(w / temp), leftovers dropped."""
        dims = x.shape[:3]
        out_dims = [(i - k) // s + 1 for i, k, s in zip(dims, kernel, stride)]
        if min(out_dims) < 1:
            raise ValueError(f"a {tuple(dims)} grid is smaller than the kernel {tuple(kernel)}")
        out = torch.zeros(*out_dims, x.shape[-1], dtype=x.dtype)
        for i in range(out_dims[0]):
            for j in range(out_dims[1]):
                for k in range(out_dims[2]):
                    window = (slice(i * stride[0], i * stride[0] + kernel[0]),
                              slice(j * stride[1], j * stride[1] + kernel[1]),
                              slice(k * stride[2], k * stride[2] + kernel[2]))
                    a = torch.softmax(weights[window].reshape(-1) / self.temp, dim=0)
                    out[i, j, k] = (x[window].reshape(-1, x.shape[-1]) * a[:, None]).sum(dim=0)
        return out

    def _pooled(self, features, clip_ids, clip_mask, video):
        rel = self.relevance(features, clip_ids, clip_mask)
        T = features.shape[0]
        g0, g1 = self.frame_shape
        hidden = self.project(features).reshape(T, g0, g1, -1)
        kernel, stride = ((self.video_kernel, self.video_stride) if video else (self.image_kernel, self.image_stride))
        pooled = self.pool(hidden, rel, kernel, stride)
        return rel, pooled

    # -------------------------------------------------------------------- media

    def encode(self, media_type, pixel_values, clip_ids, clip_mask=None, image_size=None):
        x = pixel_values.to(self.dtype)
        nl = self.W("image_newline")
        if media_type == "image":
            if x.ndim != 4:
                raise ValueError("an image is (1 + n crops, 3, S, S)")
            features = self.selected_features(x)                                   # 4-D: T = 1 in the adapter
            rel, pooled = self._pooled(features, clip_ids, clip_mask, video=False)
            crops, h, w, d = pooled.shape
            flat = pooled.reshape(-1, d)
            if crops > 1:
                if image_size is None:
                    raise ValueError("an image of several crops needs image_size (height, width)")
                rows, cols = anyres_grid(image_size, self.pinpoints, self.vision.image_size)
                if rows * cols != crops - 1:
                    raise ValueError(f"{crops - 1} crops after the base one, the grid for {tuple(image_size)} "
                                     f"is {rows} x {cols}")
                grid = pooled[1:].reshape(rows, cols, h, w, d).permute(4, 0, 2, 1, 3).reshape(d, rows * h, cols * w)
                grid = unpad(grid, image_size)
                grid = torch.cat([grid, nl[:, None, None].expand(d, grid.shape[1], 1)], dim=-1)
                features_out = torch.cat([pooled[0].reshape(h * w, d), grid.flatten(1, 2).transpose(0, 1)], dim=0)
            else:
                features_out = torch.cat([pooled[0].reshape(h * w, d), nl[None]], dim=0)
            return {"relevance": rel, "pooled": flat, "features": features_out, "blocks": [features_out]}
        if media_type not in ("video", "multi-image"):
            raise ValueError(f"media_type {media_type!r}: one of video, image, multi-image")
        if x.ndim == 4:
            x = x[:, None]                                                            # (num_frames, num_patches=1, ...)
        num_frames, num_patches = x.shape[:2]
        if num_patches != 1:
            raise ValueError("their encode_video takes one patch per frame")
        if self.btadapter:
            x = x.view(num_patches, num_frames, *x.shape[2:])
        else:
            x = x.view(num_frames * num_patches, *x.shape[2:])
        features = self.selected_features(x)
        rel, pooled = self._pooled(features, clip_ids, clip_mask, video=media_type == "video")
        flat = pooled.reshape(-1, pooled.shape[-1])
        if media_type == "video":
            return {"relevance": rel, "pooled": flat, "features": flat, "blocks": [flat]}
        blocks = [pooled[i].reshape(-1, pooled.shape[-1]) for i in range(pooled.shape[0])]
        return {"relevance": rel, "pooled": flat, "features": flat, "blocks": blocks}

    # -------------------------------------------------------------------- LLM

    @property
    def llm(self):
        if self._llm is None:
            from transformers import AutoConfig, AutoModelForCausalLM
            fields = dict(self.config["text_config"])
            conf = AutoConfig.for_model(fields.pop("model_type"), **fields)
            conf.tie_word_embeddings = False
            conf._attn_implementation = "eager"
            model = AutoModelForCausalLM.from_config(conf).to(self.dtype).eval()
            prefix = "language_model."
            weights = {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}
            model.load_state_dict(weights, strict=True)
            self._llm = model
        return self._llm

    def logits(self, input_ids, media, clip_ids, clip_mask=None):
        """media: one sample's items in order, each a dict(media_type=, pixel_values=, image_size=None) or a
        (media_type, pixel_values[, image_size]) tuple; clip_ids / clip_mask (M, Lc) (row i for item i) or (Lc,)."""
        ids = torch.as_tensor(input_ids).reshape(-1).long()
        clip_ids = torch.as_tensor(clip_ids)
        if clip_ids.ndim == 1:
            clip_ids = clip_ids[None].expand(len(media), -1)
        if clip_mask is not None:
            clip_mask = torch.as_tensor(clip_mask)
            if clip_mask.ndim == 1:
                clip_mask = clip_mask[None].expand(len(media), -1)
        blocks = []
        for i, item in enumerate(media):
            if not isinstance(item, dict):
                item = dict(zip(("media_type", "pixel_values", "image_size"), item))
            blocks += self.encode(item["media_type"], item["pixel_values"], clip_ids[i],
                                  None if clip_mask is None else clip_mask[i], item.get("image_size"))["blocks"]
        n_tokens = int((ids == self.image_token).sum())
        if n_tokens != len(blocks):
            raise ValueError(f"{n_tokens} image tokens for {len(blocks)} visual blocks")
        embed = self.llm.get_input_embeddings().weight
        pieces, next_block = [], iter(blocks)
        for token in ids.tolist():
            if token == self.image_token:
                pieces.append(next(next_block).to(embed.dtype))
            elif token == self.pad_token:                                    # their step 6
                pieces.append(torch.zeros(1, embed.shape[1], dtype=embed.dtype))
            else:
                pieces.append(embed[token][None])
        embeds = torch.cat(pieces)[None]
        length = embeds.shape[1]
        with torch.no_grad():
            out = self.llm(inputs_embeds=embeds, attention_mask=torch.ones(1, length, dtype=torch.long),
                           position_ids=torch.arange(length)[None])
        return out.logits[0]

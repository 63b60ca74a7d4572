"""Put backends' fused LLM kernels (torch_npu's on an NPU) into the LLM this project builds.

config.npu_fused_kernels names the kernels ("rms_norm", "rotary", "attention"); empty (the default) keeps
transformers' modules. Nothing of transformers is patched:
    attention  a function registered under its own name with transformers' AttentionInterface (and a mask
               function with AttentionMaskInterface, so it always receives a boolean mask), selected with
               set_attn_implementation on the LLM
    rms_norm   each RMSNorm module of the LLM replaced by FusedRMSNorm, holding the same weight
    rotary     each self-attention module replaced by RotaryAttention, holding the same projections and
               attributes (llama and qwen2 layouts), which applies the rotary kernel
Parameter names do not change, so checkpoints load either way. impl="native" uses the kernels' native
twins: the same code paths on any device, which is how the tests check them on the CPU.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.llama.modeling_llama import repeat_kv
from transformers.utils.deprecation import deprecate_kwarg

from backends import llm_kernels

ROTARY_MODEL_TYPES = ("llama", "qwen2")   # self-attention modules RotaryAttention reproduces


class FusedRMSNorm(nn.Module):
    """An RMSNorm through backends.llm_kernels.rms_norm; same parameter name (weight) as transformers'."""

    def __init__(self, weight: nn.Parameter, eps: float, kernel):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps
        self.kernel = kernel

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.kernel(hidden_states, self.weight, self.variance_epsilon)


class RotaryAttention(nn.Module):
    """Llama / Qwen2 self-attention whose rotary embedding runs through backends.llm_kernels.rotary.

    Adopts the replaced module's projections and attributes; its forward is theirs with the rotary kernel."""

    def __init__(self, original: nn.Module, kernel):
        super().__init__()
        for key, value in vars(original).items():
            if not key.startswith("_"):
                setattr(self, key, value)
        for name, child in original.named_children():
            self.add_module(name, child)
        self.kernel = kernel
        self.eager_attention = sys.modules[type(original).__module__].eager_attention_forward

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        query, key = self.kernel(query, cos, sin), self.kernel(key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        attention = AttentionInterface().get_interface(self.config._attn_implementation, self.eager_attention)
        out, weights = attention(self, query, key, value, attention_mask,
                                 dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling,
                                 sliding_window=getattr(self, "sliding_window", None), **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


def _boolean_mask(*args, **kwargs):
    """transformers' SDPA mask, always materialised (True = attend), never skipped for is_causal."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def attention_function(kernel):
    """An AttentionInterface function that feeds `kernel` (B, N, S, D) heads and a True-means-masked mask."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        groups = getattr(module, "num_key_value_groups", 1)
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        q_len, kv_len = query.shape[2], key.shape[2]
        if attention_mask is not None:
            masked_out = ~attention_mask if attention_mask.dtype == torch.bool else attention_mask < 0
            masked_out = masked_out[..., :kv_len]
        elif getattr(module, "is_causal", True) and q_len > 1:  # the queries are the last q_len positions
            masked_out = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).triu(kv_len - q_len + 1)
        else:
            masked_out = None
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = kernel(query, key, value, masked_out, scale, 1.0 - dropout)
        return out.transpose(1, 2).contiguous(), None

    return attention


def attention_name(impl: str) -> str:
    return f"ppllava_{impl}"


def use_llm_kernels(llm: nn.Module, names, impl: str = "npu") -> None:
    """Swap the named kernels into `llm` (a transformers causal LM this project built), in place."""
    kernels = {name: llm_kernels.load(name, impl) for name in names or ()}  # one clear error without torch_npu
    if not kernels:
        return
    if "rotary" in kernels and llm.config.model_type not in ROTARY_MODEL_TYPES:
        raise ValueError(f"npu_fused_kernels: 'rotary' supports the {' and '.join(ROTARY_MODEL_TYPES)} LLMs, "
                         f"not {llm.config.model_type!r}")
    for parent in list(llm.modules()):
        for child_name, child in list(parent.named_children()):
            if "rms_norm" in kernels and type(child).__name__.endswith("RMSNorm"):
                setattr(parent, child_name, FusedRMSNorm(child.weight, child.variance_epsilon, kernels["rms_norm"]))
            elif "rotary" in kernels and child_name == "self_attn":
                setattr(parent, child_name, RotaryAttention(child, kernels["rotary"]))
    if "attention" in kernels:
        name = attention_name(impl)
        AttentionInterface.register(name, attention_function(kernels["attention"]))
        AttentionMaskInterface.register(name, _boolean_mask)
        llm.set_attn_implementation(name)

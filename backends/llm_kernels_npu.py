"""torch_npu's fused LLM kernels behind backends.llm_kernels (imported only when one is asked for).

These calls are the only lines of the NPU path that CI cannot run (no NPU there); their native twins in
llm_kernels take the same arguments and are tested against transformers' own modules. MindSpeed's RoPE
kernel is used when MindSpeed is installed; it is never required.
"""

from __future__ import annotations

import torch_npu

try:
    from mindspeed.ops.npu_rotary_position_embedding import npu_rotary_position_embedding
except ImportError:
    npu_rotary_position_embedding = None


def rms_norm_npu(x, weight, eps):
    return torch_npu.npu_rms_norm(x, weight.to(x.dtype), epsilon=eps)[0]


def rotary_npu(x, cos, sin):
    if npu_rotary_position_embedding is not None:
        return npu_rotary_position_embedding(x, cos, sin, 0)  # mode 0: rotate_half
    return torch_npu.npu_rotary_mul(x, cos, sin)


def attention_npu(query, key, value, masked_out, scale, keep_prob):
    return torch_npu.npu_fusion_attention(query, key, value, query.shape[1], "BNSD", atten_mask=masked_out,
                                          scale=scale, keep_prob=keep_prob)[0]

"""The LLM side of the NPU path: fused-kernel switches, their native twins and the module swaps, on the CPU.

use_llm_kernels(..., impl="native") runs the same swaps and registrations as impl="npu" with the kernels'
native twins, so these tests cover every line of the NPU path except the torch_npu calls themselves.
"""

import copy
import json
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, apply_rotary_pos_emb

from backends import ImplementationUnavailable, llm_kernels
from ppllava.model import build_model, load_config
from ppllava.model.checkpoint import save_weights
from ppllava.model.llm_kernels import FusedRMSNorm, RotaryAttention, attention_function, use_llm_kernels

no_torch_npu = pytest.mark.skipif("torch_npu" in sys.modules, reason="torch_npu is installed")
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}


def _llm(model_type, seed=0):
    config = AutoConfig.for_model(model_type, vocab_size=128, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def test_rms_norm_twin_is_transformers_rmsnorm():
    norm = Qwen2RMSNorm(64, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 5, 64).to(dtype)
        assert torch.equal(llm_kernels.rms_norm_native(x, norm.weight.to(dtype), 1e-6), norm.to(dtype)(x))


def test_rotary_twin_is_transformers_apply_rotary_pos_emb():
    q, k = torch.randn(2, 4, 7, 16), torch.randn(2, 2, 7, 16)
    angles = torch.randn(2, 7, 16)
    expected_q, expected_k = apply_rotary_pos_emb(q, k, angles.cos(), angles.sin())
    cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)   # (B, 1, S, D), npu_rotary_mul's B1SD
    assert torch.equal(llm_kernels.rotary_native(q, cos, sin), expected_q)
    assert torch.equal(llm_kernels.rotary_native(k, cos, sin), expected_k)


def _run(model, ids, mask):
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask).logits
    logits[mask.bool()].float().square().mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_twins_in_the_model_give_transformers_logits_and_gradients(model_type, dtype):
    base = _llm(model_type).to(dtype)
    swapped = copy.deepcopy(base)
    use_llm_kernels(swapped, ["rms_norm", "rotary", "attention"], impl="native")
    assert isinstance(swapped.model.norm, FusedRMSNorm) and isinstance(swapped.model.layers[1].self_attn, RotaryAttention)
    assert swapped.config._attn_implementation == "ppllava_native"
    assert swapped.state_dict().keys() == base.state_dict().keys()  # checkpoints load either way
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0  # left padding: the mask reaches the kernel
    expected, expected_grads = _run(base, ids, mask)
    got, grads = _run(swapped, ids, mask)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], **TOLERANCE[dtype])
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, **TOLERANCE[dtype], msg=name)


@pytest.mark.parametrize("names", [["attention"], ["rotary"], ["rms_norm"]])
def test_each_switch_alone_generates_what_transformers_generates(names):
    base = _llm("qwen2", seed=3)
    swapped = copy.deepcopy(base)
    use_llm_kernels(swapped, names, impl="native")
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # greedy decoding through the KV cache: one-token queries after the prompt
        expected = base.generate(ids, max_new_tokens=6, do_sample=False)
        assert torch.equal(swapped.generate(ids, max_new_tokens=6, do_sample=False), expected)


def test_attention_without_a_mask_is_causal():
    module = _llm("llama").model.layers[0].self_attn        # 4 query heads share 2 key/value heads
    q, k, v = (torch.randn(1, 4, 6, 16) for _ in range(3))
    out, _ = attention_function(llm_kernels.attention_native)(module, q, k[:, :2], v[:, :2], None, scaling=0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k[:, :2].repeat_interleave(2, 1),
                                                                v[:, :2].repeat_interleave(2, 1), is_causal=True, scale=0.25)
    torch.testing.assert_close(out, expected.transpose(1, 2))


def test_rotary_refuses_an_llm_whose_attention_it_does_not_reproduce():
    config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=1, n_head=2, vocab_size=64)
    with pytest.raises(ValueError, match="'rotary' supports the llama and qwen2 LLMs, not 'gpt2'"):
        use_llm_kernels(AutoModelForCausalLM.from_config(config), ["rotary"], impl="native")


def test_unknown_kernel_names_are_a_config_error():
    config = load_config("tiny")
    config.npu_fused_kernels = ["rms_norm", "flash"]
    with pytest.raises(ValueError, match=r"npu_fused_kernels: unknown \['flash'\]"):
        config.check()


@no_torch_npu
def test_enabling_the_switch_without_torch_npu_is_one_clear_error():
    config = load_config("tiny")
    config.npu_fused_kernels = ["rms_norm"]
    with pytest.raises(ImplementationUnavailable) as info:
        build_model(config)
    message = str(info.value)
    assert "the fused NPU kernel 'rms_norm' needs torch_npu" in message and "\n" not in message
    assert "install torch-npu" in message and "leave npu_fused_kernels empty" in message
    assert "torch_npu" not in sys.modules


def test_default_is_off_and_exports_drop_the_switch(tmp_path):
    config = load_config("tiny")
    assert not config.npu_fused_kernels
    model = build_model(config, seed=0)
    assert not any(isinstance(m, (FusedRMSNorm, RotaryAttention)) for m in model.modules())
    config.npu_fused_kernels = ["rms_norm", "attention"]  # a training run on a 910B had them on
    save_weights(config, model.state_dict(), tmp_path, torch.float32)
    assert json.loads((tmp_path / "config.json").read_text())["npu_fused_kernels"] is None

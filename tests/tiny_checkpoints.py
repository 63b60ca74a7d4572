"""Tiny random checkpoints of the real architectures, saved like Hugging Face folders (no download).

LLaVA-OneVision (SigLIP + Qwen2) with its paired SigLIP dual model, LLaVA-NeXT (CLIP + Llama) with
its paired CLIP dual model, InternVL3 (InternViT + Qwen2) with a CLIP text tower to align to it, and
tiny byte-level BPE tokenizers trained offline.
"""

from __future__ import annotations

import torch
from tokenizers import AddedToken
from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection, InternVLConfig,
                          InternVLForConditionalGeneration, LlavaNextConfig, LlavaNextForConditionalGeneration,
                          LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                          SiglipConfig, SiglipModel)

from ppllava.model.tiny import llm_tokenizer, make_tokenizer  # noqa: F401  (tests import them from here)

LAYERS = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def save_siglip_pair(directory, hidden=32, vision_hidden=None, image_size=54):
    """A SiglipModel (text max 64 positions) and its tokenizer; 54 px / patch 2 = the 27x27 grid of SigLIP-384."""
    tokenizer = make_tokenizer(300, ["<pad>", "</s>", "<unk>"], None, "</s>")
    vision_hidden = vision_hidden or hidden
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, max_position_embeddings=64,
                         projection_size=vision_hidden, pad_token_id=0, eos_token_id=1, **LAYERS),
        vision_config=dict(hidden_size=vision_hidden, image_size=image_size, patch_size=2, **LAYERS))
    torch.manual_seed(1)
    model = SiglipModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(4.7)
    model.save_pretrained(directory)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(directory)
    return model


def save_clip_pair(directory, hidden=32, image_size=48):
    """A CLIPModel (text max 77 positions) and its tokenizer; 48 px / patch 2 = the 24x24 grid of CLIP-L/336."""
    tokenizer = make_tokenizer(300, ["<|startoftext|>", "<|endoftext|>"], "<|startoftext|>", "<|endoftext|>")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, max_position_embeddings=77, projection_dim=16,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1, **LAYERS),
        vision_config=dict(hidden_size=hidden, image_size=image_size, patch_size=2, projection_dim=16, **LAYERS),
        projection_dim=16)
    torch.manual_seed(2)
    model = CLIPModel(config)
    model.save_pretrained(directory)
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(directory)
    return model


def save_llava_onevision(directory, vision_hidden=32, image_size=54):
    tokenizer = llm_tokenizer()
    image_id, video_id = tokenizer.convert_tokens_to_ids(["<image>", "<video>"])
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=vision_hidden, image_size=image_size,
                           patch_size=2, vision_use_head=False, **LAYERS),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=0, pad_token_id=0),
        image_token_index=image_id, video_token_index=video_id, vision_feature_layer=-1,
        vision_feature_select_strategy="full")
    torch.manual_seed(3)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def save_llava_next(directory, image_size=48):
    tokenizer = llm_tokenizer()
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, image_size=image_size, patch_size=2,
                           projection_dim=16, **LAYERS),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         eos_token_id=0, pad_token_id=0),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_grid_pinpoints=[[image_size, image_size]])
    torch.manual_seed(4)
    model = LlavaNextForConditionalGeneration(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def save_internvl(directory, image_size=48, patch_size=4):
    """An InternVLForConditionalGeneration (InternViT + Qwen2, pixel shuffle 0.5): 48 px / patch 4 = 12x12
    patches -> 6x6 tokens. Its tokenizer has InternVL's <img> / </img> around each image."""
    tokenizer = llm_tokenizer()
    tokenizer.add_tokens([AddedToken("<img>", special=True, normalized=False),
                          AddedToken("</img>", special=True, normalized=False)], special_tokens=True)
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, image_size=image_size, patch_size=patch_size, **LAYERS),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=0, pad_token_id=0),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(5)
    model = InternVLForConditionalGeneration(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def save_clip_text(directory, corpus, hidden=32, projection_dim=16):
    """A CLIPTextModelWithProjection (77 positions) with a tokenizer trained on `corpus`: the start of an alignment."""
    tokenizer = make_tokenizer(300, ["<|startoftext|>", "<|endoftext|>"], "<|startoftext|>", "<|endoftext|>",
                               corpus=corpus)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, max_position_embeddings=77,
                            projection_dim=projection_dim, bos_token_id=0, eos_token_id=1, pad_token_id=1, **LAYERS)
    torch.manual_seed(6)
    model = CLIPTextModelWithProjection(config)
    model.save_pretrained(directory)
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(directory)
    return model

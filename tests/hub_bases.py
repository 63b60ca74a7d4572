"""Tiny random-weight checkpoints laid out the way the Hugging Face Hub ships the real ones (issue 19).

`write_base(name, directory)` writes one of the four PPLLaVA bases, `write_tower(name, directory)` one of the
two dual models whose text tower PPLLaVA takes, each into a local folder; nothing is downloaded:

    llava-next-vicuna-7b         llava-hf/llava-v1.6-vicuna-7b-hf            LlavaNextForConditionalGeneration
    llava-onevision-qwen2-7b-ov  llava-hf/llava-onevision-qwen2-7b-ov-hf     LlavaOnevisionForConditionalGeneration
    llava-video-7b-qwen2         llava-hf/LLaVA-Video-7B-Qwen2-hf            LlavaOnevisionForConditionalGeneration
    internvl3-8b                 OpenGVLab/InternVL3-8B-hf                   InternVLForConditionalGeneration
    clip-vit-large-patch14-336   openai/clip-vit-large-patch14-336           CLIPModel
    siglip-so400m-patch14-384    google/siglip-so400m-patch14-384            SiglipModel

What is real and what is shrunk
  * config.json is written by hand in the Hub's format (the compact, older-transformers style: `torch_dtype`,
    `rope_theta` / `rope_scaling`, `image_token_index`, fields at their class default left out where the Hub file
    leaves them out), with the real structural values: token ids, vocabulary sizes (32064 / 152128 / 151674 /
    49408 / 32000), image and patch sizes (grids 24x24, 27x27, 32x32 -> 16x16 after InternVL's 0.5 pixel shuffle),
    vision_feature_layer and select strategy, image_grid_pinpoints, anyres_max_9, image_newline, projector act,
    rope settings (InternVL3's dynamic NTK factor 2.0), tie_word_embeddings, SigLIP's vision_use_head false in
    LLaVA-OneVision, CLIP's legacy text bos 0 / eos 2 / pad 1. Only depths and widths are shrunk (LLM 2 layers of
    64, vision 2 layers of 32, 4 heads; the SigLIP dual model keeps one vision layer more than OneVision's tower,
    as the real ones do, 27 and 26); vision_feature_layer stays valid (-2 of CLIP's 2 layers).
  * Weights: random with fixed seeds, written by the model class's save_pretrained (transformers' own tensor
    names, not the older llava-hf key prefixes), sharded with model.safetensors.index.json as the Hub's 7B
    repositories are (the shard count is not theirs), in the Hub's dtype unless `dtype` says otherwise.
  * Tokenizers are of the real classes with every special token at its real id. Ordinary tokens are a small
    vocabulary trained offline on CORPUS (English words come out as one to a few tokens), padded up to the real
    size with unreachable filler entries (private-use characters: byte-level BPE never produces them, and no
    merge leads to them): Llama's is a sentencepiece BPE (byte fallback, like Llama's tokenizer.model) with its
    tokenizer.json; Qwen2's and CLIP's are byte-level BPEs (vocab.json, merges.txt, tokenizer.json); SigLIP's is
    a sentencepiece unigram spiece.model for the slow SiglipTokenizer (the Hub ships no tokenizer.json).

Where each fact comes from. Verbatim means copied from a copy of the Hub file, or from the code that wrote it.
The configs' values and their sources are cited field by field in configs/model/llava-next-7b.yaml,
llava-video-7b.yaml and internvl3-8b.yaml:
  * Chat templates, verbatim. Vicuna's comes from transformers' tests/models/llava_next processor test, which
    asserts the Hub checkpoint's render of PROMPT_MESSAGES, and from its copies. OneVision's comes from
    transformers' llava_onevision processor test and from copies that name llava-hf's chat_template.json as
    their origin; vLLM's prompts and token ids for the 7b-ov-hf repo match its render. InternVL3's comes from
    transformers' convert_internvl_weights_to_hf.py; its 481 bytes are the size the Hub lists for
    InternVL3-1B-hf's chat_template.jinja. Where each template is kept also follows the transformers versions
    that wrote them: llava-hf in the processor's chat_template.json, InternVL3-hf in chat_template.jinja.
    EXPECTED_PROMPT and EXPECTED_VIDEO_PROMPT are those templates' renders, written out by hand.
  * Special tokens and ids come from the converters (convert_llava_next_weights_to_hf.py,
    convert_llava_onevision_weights_to_hf.py, convert_internvl_weights_to_hf.py), from vLLM's ids for the
    OneVision prompt, from printed Hub tokenizers of llava-v1.6-mistral-7b-hf and InternVL3-hf (LlamaFactory
    issues #8342 and #8855), from the OpenAI CLIP ids, and from transformers' SiglipTokenizer defaults.
    InternVL3's added_tokens.json (811 B), special_tokens_map.json (877 B) and processor_config.json (72 B)
    come out at the sizes the Hub lists for InternVL3-1B-hf (BaseFacts.extra["hub_file_sizes"]).
  * processor_config.json: InternVL3's is confirmed by its size. llava-hf's come from copies of Hub folders.
    preprocessor_config.json: from printed Hub processors (InternVL3, and the LLaVA-NeXT mistral sibling, which
    uses the same CLIP image processor) and a copy of OneVision's file.
  * Inferred, not seen:
    - LLaVA-Video-7B-Qwen2-hf's files, taken as OneVision's (same class, LLM family and tower).
    - tokenizer_config.json fields other than the special tokens (model_max_length, legacy, ...), taken from
      the base LLMs' files. Vicuna's padding_side "left" and its `extra_special_tokens` image_token come from
      the mistral sibling's printout.
    - OneVision's tokenizer_config keeping Qwen2-Instruct's text-only chat_template.
    - The video processor config living in preprocessor_config.json. This is the oldest layout; later saves add
      video_preprocessor_config.json, which transformers reads first.
    - The dtypes (float16 for llava-hf, bfloat16 for InternVL3).
    - The CLIP and SigLIP tokenizer_config.json in the current format (the OpenAI repo's file is older).
    - The logit_scale and logit_bias values (CLIP 100, SigLIP 117.33 / -12.93).
Known differences from the real repositories:
  * Tensor names are transformers 5's, not llava-hf's older prefixes.
  * The tokenizer vocabularies are made up; only the special tokens are real.
  * CLIP's config.json is compact; OpenAI's is a full dump with *_config_dict.
  * The shard count is not the Hub's.
Behaviour of transformers 5 that the real folders share:
  * AutoTokenizer gives TokenizersBackend for llava_next, which reads tokenizer.json as is.
  * AutoProcessor of OneVision and InternVL needs torchvision, because their video processors require it.
  * Processing a real image yields the Hub's thousands of visual tokens, with full-vocabulary logits for each.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

# ------------------------------------------------------------------------------------------------- the facts

PROMPT_MESSAGES = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": "What is shown in this image?"}]}]
VIDEO_MESSAGES = [{"role": "user", "content": [{"type": "video"},
                                                {"type": "text", "text": "Why is this video funny?"}]}]

# llava-hf's Vicuna template (processor chat_template.json); `\n` is a newline inside the Jinja string literal
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
# llava-hf's OneVision template (processor chat_template.json): role + ' ', images, videos, then '\n' + text
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Qwen2-7B-Instruct's text-only template, left in OneVision's tokenizer_config.json by the converter (inferred)
QWEN2_TEXT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# InternVL3-hf's chat_template.jinja, 481 bytes, no trailing newline
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}")

ONEVISION_PINPOINTS = [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)]
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# Qwen2.5-VL's added tokens (151643 ...), then InternVL3's; (content, special)
QWEN25_VL_ADDED = [(t, True) for t in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>")] + [(t, False) for t in (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>")]
INTERNVL_ADDED = [(t, True) for t in ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>",
                                      "<box>", "</box>", "<video>")]


@dataclass(frozen=True)
class BaseFacts:
    """What a test may assert about a written base, independently of PPLLaVA's code."""
    repo: str
    model_class: str                 # transformers class name
    processor_class: str
    tokenizer_class: str             # as tokenizer_config.json names it
    chat_template_file: str          # where the processor's template is kept
    prompt: str                      # the Hub template's render of PROMPT_MESSAGES, add_generation_prompt=True
    video_prompt: str | None         # ... of VIDEO_MESSAGES (None: the template ignores videos)
    token_ids: dict                  # token -> its real id
    image_token: str                 # the placeholder the template writes for an image
    video_token: str | None
    bos_token: str | None
    eos_token: str
    pad_token: str
    vocab_size: int                  # config text_config.vocab_size (embedding rows)
    tokenizer_len: int               # len(tokenizer)
    patch_grid: tuple                # vision patches per side of one image / crop / frame
    token_grid: tuple                # visual tokens per side after the base's own merging (InternVL: 0.5 shuffle)
    dtype: str                       # the Hub's torch_dtype
    tower: str                       # PAIRS: the dual model whose text tower PPLLaVA pairs with it
    tokenizer_files: tuple = ()
    extra: dict = field(default_factory=dict)


BASES: dict[str, BaseFacts] = {
    "llava-next-vicuna-7b": BaseFacts(
        repo="llava-hf/llava-v1.6-vicuna-7b-hf", model_class="LlavaNextForConditionalGeneration",
        processor_class="LlavaNextProcessor", tokenizer_class="LlamaTokenizer", chat_template_file="chat_template.json",
        prompt="USER: <image>\nWhat is shown in this image? ASSISTANT:", video_prompt=None,
        token_ids={"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 32000, "<pad>": 32001},
        image_token="<image>", video_token=None, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        vocab_size=32064, tokenizer_len=32002, patch_grid=(24, 24), token_grid=(24, 24), dtype="float16",
        tower="clip-vit-large-patch14-336",
        tokenizer_files=("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                         "added_tokens.json"),
        extra={"num_additional_image_tokens": 1, "vision_feature_layer": -2,
               "vision_feature_select_strategy": "default",
               "text_pad_token_id": 0, "pad_token_id": 32001}),
    "llava-onevision-qwen2-7b-ov": BaseFacts(
        repo="llava-hf/llava-onevision-qwen2-7b-ov-hf", model_class="LlavaOnevisionForConditionalGeneration",
        processor_class="LlavaOnevisionProcessor", tokenizer_class="Qwen2Tokenizer",
        chat_template_file="chat_template.json",
        prompt="<|im_start|>user <image>\nWhat is shown in this image?<|im_end|><|im_start|>assistant\n",
        video_prompt="<|im_start|>user <video>\nWhy is this video funny?<|im_end|><|im_start|>assistant\n",
        token_ids={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<image>": 151646,
                   "<video>": 151647},
        image_token="<image>", video_token="<video>", bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        vocab_size=152128, tokenizer_len=151648, patch_grid=(27, 27), token_grid=(27, 27), dtype="float16",
        tower="siglip-so400m-patch14-384",
        tokenizer_files=("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json", "added_tokens.json"),
        extra={"num_image_tokens": 729, "video_tokens_per_frame": 196, "vision_feature_layer": -1,
               "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9",
               "tokenizer_chat_template": QWEN2_TEXT_TEMPLATE}),
    "internvl3-8b": BaseFacts(
        repo="OpenGVLab/InternVL3-8B-hf", model_class="InternVLForConditionalGeneration",
        processor_class="InternVLProcessor", tokenizer_class="Qwen2Tokenizer", chat_template_file="chat_template.jinja",
        prompt="<|im_start|>user\n<IMG_CONTEXT>\nWhat is shown in this image?<|im_end|>\n<|im_start|>assistant\n",
        video_prompt="<|im_start|>user\n<video>\nWhy is this video funny?<|im_end|>\n<|im_start|>assistant\n",
        token_ids={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<img>": 151665,
                   "</img>": 151666, "<IMG_CONTEXT>": 151667, "<video>": 151674},
        image_token="<IMG_CONTEXT>", video_token="<video>", bos_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", vocab_size=151674, tokenizer_len=151675, patch_grid=(32, 32), token_grid=(16, 16),
        dtype="bfloat16", tower="clip-vit-large-patch14-336",
        tokenizer_files=("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json", "added_tokens.json"),
        extra={"image_seq_length": 256, "downsample_ratio": 0.5, "vision_feature_layer": -1,
               "vision_feature_select_strategy": "default",
               "extra_special_tokens": {"context_image_token": "<IMG_CONTEXT>", "end_image_token": "</img>",
                                        "start_image_token": "<img>", "video_token": "<video>"},
               # the Hub's quirk: <video> (151674) is one past the embedding (151674 rows); the processor
               # replaces it by <img><IMG_CONTEXT>...</img> per frame before the model sees it
               "video_token_outside_embedding": True,
               # sizes the Hub lists for the sibling InternVL3-1B-hf's files; these folders' files have them
               "hub_file_sizes": {"processor_config.json": 72, "chat_template.jinja": 481, "added_tokens.json": 811,
                                  "special_tokens_map.json": 877}}),
}
_VIDEO = BASES["llava-onevision-qwen2-7b-ov"]
BASES["llava-video-7b-qwen2"] = BaseFacts(**{**_VIDEO.__dict__, "repo": "llava-hf/LLaVA-Video-7B-Qwen2-hf",
                                            "extra": dict(_VIDEO.extra)})


@dataclass(frozen=True)
class TowerFacts:
    repo: str
    model_class: str
    tokenizer_class: str
    is_fast: bool
    token_ids: dict
    model_max_length: int
    vocab_size: int
    files: tuple


TOWERS: dict[str, TowerFacts] = {
    "clip-vit-large-patch14-336": TowerFacts(
        repo="openai/clip-vit-large-patch14-336", model_class="CLIPModel", tokenizer_class="CLIPTokenizer",
        is_fast=True, token_ids={"<|startoftext|>": 49406, "<|endoftext|>": 49407}, model_max_length=77,
        vocab_size=49408, files=("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
                                 "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")),
    "siglip-so400m-patch14-384": TowerFacts(
        repo="google/siglip-so400m-patch14-384", model_class="SiglipModel", tokenizer_class="SiglipTokenizer",
        is_fast=False, token_ids={"<pad>": 0, "</s>": 1, "<unk>": 2}, model_max_length=64, vocab_size=32000,
        files=("config.json", "model.safetensors", "preprocessor_config.json", "spiece.model",
               "tokenizer_config.json", "special_tokens_map.json")),
}

# base -> the dual model whose text tower it pairs with (InternVL3: the CLIP text tower `ppllava align` starts from)
PAIRS = {name: facts.tower for name, facts in BASES.items()}
EXPECTED_PROMPT = {name: facts.prompt for name, facts in BASES.items()}
EXPECTED_VIDEO_PROMPT = {name: facts.video_prompt for name, facts in BASES.items()}

# shrunk widths and depths
LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
PROJECTION = 32            # CLIP projection_dim (768 in the real ones, base and tower alike)
SEEDS = {"llava-next-vicuna-7b": 11, "llava-onevision-qwen2-7b-ov": 12, "llava-video-7b-qwen2": 13,
         "internvl3-8b": 14, "clip-vit-large-patch14-336": 15, "siglip-so400m-patch14-384": 16}

# ------------------------------------------------------------------------------------------------ the corpus

CORPUS = [
    "What is shown in this image?", "Why is this video funny?", "Describe the image in detail.",
    "What happens in the video after the man opens the door?", "How many people are there in the picture?",
    "The cat sits on the red mat near the window.", "A person is cooking food in a small kitchen while music plays.",
    "A young woman is riding a bicycle down a busy street in the city.",
    "Two children are playing with a ball in the park on a sunny day.",
    "The dog runs across the green field and catches the frisbee.",
    "An old man is reading a newspaper at a table in the cafe.",
    "There are three cars parked in front of the white house.",
    "The sky is blue and there are a few clouds over the mountains.",
    "A group of friends are sitting around a fire at night and talking.",
    "She picks up the phone, looks at the screen and starts to laugh.",
    "The boy throws the paper plane and it flies out of the open window.",
    "What color is the shirt of the person standing on the left?",
    "Is there anything unusual about this scene?", "What is the woman holding in her right hand?",
    "Where is this photo taken? It looks like a beach in the summer.",
    "The video shows a chef slicing vegetables and putting them into a pan.",
    "First he washes the dishes, then he dries them and puts them away.",
    "The train arrives at the station and many passengers get off.",
    "A bird is flying above the lake and the water is calm.",
    "Please answer the question with a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "The man in the black jacket walks into the room and sits down on the sofa.",
    "At the end of the clip, everyone claps and the music stops.",
    "The baby is sleeping in a crib next to a large teddy bear.",
    "What time of day is it in the video? It seems to be early morning.",
    "A horse is eating grass beside a wooden fence on the farm.",
    "The players wear yellow shirts and the referee blows the whistle.",
    "There is a bowl of fruit with apples, bananas and oranges on the kitchen counter.",
    "Can you tell me what the sign on the building says?",
    "The girl is painting a picture of flowers with bright colors.",
    "He falls off the chair and the whole class starts laughing.",
    "Summarize the main events of the video in one sentence.",
    "The image shows a street at night with lights from shops and cars.",
    "A man and a woman are dancing together on a stage in front of an audience.",
    "How does the weather change during the video?",
    "The computer screen shows a chart with numbers from 2019 to 2024.",
    "It is raining, so people are holding umbrellas while they wait for the bus.",
    "The robot picks up the blue box and places it on the shelf.",
    "Which object is closer to the camera, the lamp or the chair?",
    "The students are listening to the teacher who is writing on the board.",
    "A small boat is sailing on the river under a stone bridge.",
    "What is the relationship between the two people in the image?",
    "The cake has candles on it and the family sings happy birthday.",
    "Count the number of birds sitting on the wire.", "The door is closed and the light is off.",
    "This is a photo of a modern living room with a large television.",
    "The athlete jumps over the bar and lands on the soft mat.",
    "Explain why the audience is surprised at the end.",
    "They open the gift box and find a puppy inside.",
    "The woman pours coffee into a cup and adds some milk and sugar.",
    "A snowy road winds through the forest between tall trees.",
    "The video begins with a view of the ocean and ends with a sunset.",
    "Is the person in the video happy or sad? Give a reason for your answer.",
    "USER: Hello, can you help me with this picture? ASSISTANT: Yes, of course.",
    "USER: Thank you. ASSISTANT: You are welcome.",
    "system: You are a helpful assistant. user: Describe the video. assistant: A man opens the door.",
    "Frame1: Frame2: Frame3: Frame4: Frame5: Frame6: Frame7: Frame8:",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 .,:;!?'\"()[]{}<>/\\|-_+=*&^%$#@~`",
    "Monday, Tuesday and Sunday in January, May and December: London, Paris, New York, Tokyo and Berlin.",
    "user assistant system user assistant system user assistant system",
]

# ------------------------------------------------------------------------------------------------ json helpers


def _json(obj, indent: int | None = 2) -> str:
    """The way transformers writes its JSON files (sorted keys, two-space indent, trailing newline)."""
    return json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n"


def _added(content: str, special: bool = True, normalized: bool = False, strip: bool = False) -> dict:
    return {"content": content, "lstrip": strip, "normalized": normalized, "rstrip": strip, "single_word": False,
            "special": special}


def _token_dict(content: str, normalized: bool = False, strip: bool = False) -> dict:
    entry = _added(content, normalized=normalized, strip=strip)
    del entry["special"]
    return entry


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table, in its order (the order of ids 0-255 in GPT-2, Qwen2 and CLIP vocabs)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _pua_fillers(count: int, start: int = 0):
    """`count` distinct strings of private-use characters: no byte-level pre-tokenizer or English text yields them."""
    for i in range(start, start + count):
        yield chr(0xE000 + i // 6400) + chr(0xE000 + i % 6400)


# ------------------------------------------------------------------------------------------------ tokenizers


def _byte_level_bpe(size: int, normalizer, pre_tokenizer, suffix: str = "", corpus=CORPUS, trained: int = 1200):
    """(vocab, merges) of a byte-level BPE trained on `corpus`: the 256 byte characters (and, with an
    end-of-word suffix, their suffixed forms) first in GPT-2's order, then the merges' results, then fillers up
    to `size` entries."""
    if suffix:
        merges = _learn_bpe_with_suffix(normalizer, pre_tokenizer, suffix, corpus, trained)
    else:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
        tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=trained, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        merges = json.loads(tok.to_str())["model"]["merges"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    alphabet = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(alphabet + ([c + suffix for c in alphabet] if suffix else []))}
    kept = []
    for a, b in merges:
        if a in vocab and b in vocab and a + b not in vocab:
            vocab[a + b] = len(vocab)
            kept.append((a, b))
    for filler in _pua_fillers(size - len(vocab)):
        vocab[filler] = len(vocab)
    return vocab, kept


def _learn_bpe_with_suffix(normalizer, pre_tokenizer, suffix: str, corpus, trained: int) -> list[tuple[str, str]]:
    """A plain BPE learner (the most frequent pair first, ties by the pair's text) over words whose last symbol
    carries `suffix`, as CLIP's BPE does. tokenizers' trainer numbers the suffixed symbols in hash order, so its
    ties, and then its merges, change from one process to the next."""
    from collections import Counter
    counts = Counter(word for text in corpus
                     for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    words = [([*word[:-1], word[-1] + suffix], n) for word, n in sorted(counts.items())]
    merges = []
    while len(merges) < trained:
        pairs = Counter()
        for symbols, n in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        (a, b), n = min(pairs.items(), key=lambda item: (-item[1], item[0]))
        if n < 2:
            break
        merges.append((a, b))
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == a and symbols[i + 1] == b:
                    symbols[i:i + 2] = [a + b]
                i += 1
    return merges


def _merges_txt(merges) -> str:
    return "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)


@functools.lru_cache(maxsize=None)
def _qwen2_files(kind: str) -> dict[str, str]:
    """vocab.json, merges.txt, tokenizer.json of a Qwen2 byte-level BPE (151643 ordinary entries) with the added
    tokens of `kind` ("onevision": Qwen2-Instruct + <image> <video>; "internvl": Qwen2.5-VL + InternVL3's)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    vocab, merges = _byte_level_bpe(151643, normalizers.NFC(), pre)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer, tok.pre_tokenizer = normalizers.NFC(), pre
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    added = _qwen2_added(kind)
    for content, special in added:          # one at a time: each takes the next id
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n",
            "merges.txt": _merges_txt(merges), "tokenizer.json": tok.to_str(pretty=True)}


def _qwen2_added(kind: str) -> list[tuple[str, bool]]:
    if kind == "onevision":
        return [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<image>", True),
                ("<video>", True)]
    return QWEN25_VL_ADDED + INTERNVL_ADDED


def _sp_train(**options) -> "object":
    """A sentencepiece ModelProto trained on CORPUS in memory (a fraction of a second)."""
    import sentencepiece as spm
    from transformers.convert_slow_tokenizer import import_protobuf
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(options.pop("corpus", CORPUS)), model_writer=buffer,
                                   num_threads=1, hard_vocab_limit=False, character_coverage=1.0,
                                   minloglevel=3, **options)
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(buffer.getvalue())
    return proto


def _sp_pad(proto, size: int):
    """Pads a ModelProto with unreachable NORMAL pieces (private-use characters, lowest scores) to `size`."""
    low = min(p.score for p in proto.pieces) - 1.0
    for i, filler in enumerate(_pua_fillers(size - len(proto.pieces))):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = filler, low - i * 1e-3, 1
    proto.trainer_spec.vocab_size = size
    return proto


@functools.lru_cache(maxsize=None)
def _llama_files() -> dict[str, bytes | str]:
    """tokenizer.model (a sentencepiece BPE shaped as Llama's: <unk> <s> </s>, 256 byte pieces, 32000 pieces)
    and the tokenizer.json transformers' LlamaTokenizer(Fast) uses, with <image> 32000 and <pad> 32001."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers.tokenization_utils_base import generate_merges
    proto = _sp_pad(_sp_train(model_type="bpe", vocab_size=1500, byte_fallback=True, split_digits=True,
                              unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
                              remove_extra_whitespaces=False, normalization_rule_name="identity",
                              allow_whitespace_only_pieces=True), 32000)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    control = {p.piece for p in proto.pieces if p.type in (2, 3, 6)}     # unknown, control, byte pieces
    tok = Tokenizer(models.BPE(vocab=vocab, merges=generate_merges(vocab, skip_tokens=control), unk_token="<unk>",
                               fuse_unk=True, byte_fallback=True, dropout=None))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    for t in ("<image>", "<pad>"):
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
    return {"tokenizer.model": proto.SerializeToString(), "tokenizer.json": tok.to_str(pretty=True)}


@functools.lru_cache(maxsize=None)
def _clip_files() -> dict[str, str]:
    """vocab.json / merges.txt / tokenizer.json of CLIP's BPE: 256 bytes, 256 bytes + </w>, merges, fillers,
    then <|startoftext|> 49406 and <|endoftext|> 49407 (in the vocabulary, as in OpenAI's)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    norm = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
                                   r"""|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    vocab, merges = _byte_level_bpe(49406, norm, pre, suffix="</w>")
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="</w>", fuse_unk=False, unk_token="<|endoftext|>"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", 49407), ("<|startoftext|>", 49406),
                                                      trim_offsets=False, add_prefix_space=False)
    tok.add_special_tokens([AddedToken("<|startoftext|>", special=True, normalized=True),
                            AddedToken("<|endoftext|>", special=True, normalized=False)])
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n",
            "merges.txt": _merges_txt(merges), "tokenizer.json": tok.to_str(pretty=True)}


@functools.lru_cache(maxsize=None)
def _siglip_spiece() -> bytes:
    """spiece.model: a sentencepiece unigram shaped as the c4_en model SigLIP uses (<pad> 0, </s> 1, <unk> 2,
    32000 pieces), trained on CORPUS as SiglipTokenizer canonicalizes text (lower case, no punctuation)."""
    import re
    import string
    corpus = [" ".join(re.sub(f"[{re.escape(string.punctuation)}]", "", s.lower()).split()) for s in CORPUS]
    proto = _sp_train(model_type="unigram", vocab_size=900, pad_id=0, pad_piece="<pad>", eos_id=1, eos_piece="</s>",
                      unk_id=2, unk_piece="<unk>", bos_id=-1, normalization_rule_name="nmt_nfkc", corpus=corpus)
    return _sp_pad(proto, 32000).SerializeToString()


# ------------------------------------------------------------------------------------------------ file contents


def _tokenizer_files(name: str) -> dict[str, str | bytes]:
    facts = BASES[name]
    if name == "llava-next-vicuna-7b":
        files = dict(_llama_files())
        decoder = {str(i): _added(t) for t, i in facts.token_ids.items()}
        files["tokenizer_config.json"] = _json({
            "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder, "bos_token": "<s>",
            "clean_up_tokenization_spaces": False, "eos_token": "</s>",
            "extra_special_tokens": {"image_token": "<image>"},
            "legacy": False, "model_max_length": 4096, "pad_token": "<pad>", "padding_side": "left",
            "processor_class": "LlavaNextProcessor", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>", "use_default_system_prompt": False})
        files["special_tokens_map.json"] = _json({
            "bos_token": _token_dict("<s>"), "eos_token": _token_dict("</s>"), "image_token": "<image>",
            "pad_token": _token_dict("<pad>"), "unk_token": _token_dict("<unk>")})
        files["added_tokens.json"] = _json({"<image>": 32000, "<pad>": 32001})
        return files
    kind = "onevision" if facts.model_class.startswith("LlavaOnevision") else "internvl"
    files = dict(_qwen2_files(kind))
    added = _qwen2_added(kind)
    decoder = {str(151643 + i): _added(t, special) for i, (t, special) in enumerate(added)}
    config = {"add_prefix_space": False, "added_tokens_decoder": decoder, "bos_token": None,
              "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
              "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
              "unk_token": None, "processor_class": facts.processor_class}
    if kind == "onevision":
        extras = ["<|im_start|>", "<|im_end|>"]
        config.update(additional_special_tokens=extras, chat_template=QWEN2_TEXT_TEMPLATE, model_max_length=32768)
        special_map = {"additional_special_tokens": extras}
    else:
        extras = [t for t, special in QWEN25_VL_ADDED[1:] if special] + [t for t, _ in INTERNVL_ADDED[:-1]]
        config.update(additional_special_tokens=extras, extra_special_tokens=facts.extra["extra_special_tokens"],
                      model_max_length=8192, return_token_type_ids=False)
        special_map = {"additional_special_tokens": extras, **facts.extra["extra_special_tokens"]}
    special_map.update(eos_token=_token_dict("<|im_end|>"), pad_token=_token_dict("<|endoftext|>"))
    files["tokenizer_config.json"] = _json(config)
    files["special_tokens_map.json"] = _json(special_map)
    files["added_tokens.json"] = _json({t: 151643 + i for i, (t, _) in enumerate(added)})
    return files


def _processor_files(name: str) -> dict[str, str]:
    facts = BASES[name]
    if name == "llava-next-vicuna-7b":
        return {
            "chat_template.json": _json({"chat_template": VICUNA_TEMPLATE}),
            "processor_config.json": _json({"image_token": "<image>", "num_additional_image_tokens": 1,
                                            "patch_size": 14, "processor_class": "LlavaNextProcessor",
                                            "vision_feature_select_strategy": "default"}),
            "preprocessor_config.json": _json({
                "aspect_ratio_setting": "anyres", "crop_size": {"height": 336, "width": 336}, "do_center_crop": True,
                "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
                "image_grid_pinpoints": LLAVA_NEXT_PINPOINTS, "image_mean": CLIP_MEAN,
                "image_processor_type": "LlavaNextImageProcessor", "image_std": CLIP_STD,
                "processor_class": "LlavaNextProcessor", "resample": 3, "rescale_factor": 1 / 255,
                "size": {"shortest_edge": 336}})}
    if facts.processor_class == "LlavaOnevisionProcessor":
        return {
            "chat_template.json": _json({"chat_template": ONEVISION_TEMPLATE}),
            "processor_config.json": _json({"image_token": "<image>", "num_image_tokens": 729,
                                            "processor_class": "LlavaOnevisionProcessor", "video_token": "<video>",
                                            "vision_feature_select_strategy": "full"}),
            "preprocessor_config.json": _json({
                "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
                "image_grid_pinpoints": ONEVISION_PINPOINTS, "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "LlavaOnevisionImageProcessor", "image_std": [0.5, 0.5, 0.5],
                "processor_class": "LlavaOnevisionProcessor", "resample": 3, "rescale_factor": 1 / 255,
                "size": {"height": 384, "width": 384}})}
    return {
        "chat_template.jinja": INTERNVL_TEMPLATE,
        "processor_config.json": _json({"image_seq_length": 256, "processor_class": "InternVLProcessor"}),
        "preprocessor_config.json": _json({
            "crop_size": None, "crop_to_patches": False, "data_format": "channels_first", "default_to_square": True,
            "device": None, "do_center_crop": None, "do_convert_rgb": True, "do_normalize": True, "do_pad": None,
            "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
            "image_processor_type": "GotOcr2ImageProcessorFast", "image_std": [0.229, 0.224, 0.225],
            "input_data_format": None, "max_patches": 12, "min_patches": 1, "processor_class": "InternVLProcessor",
            "resample": 3, "rescale_factor": 1 / 255, "return_tensors": None, "size": {"height": 448, "width": 448},
            "size_divisor": None})}


def _version() -> str:
    import transformers
    return transformers.__version__


def _base_config(name: str, dtype: str) -> tuple[dict, dict]:
    """(config.json, generation_config.json) in the Hub's format, depths and widths shrunk."""
    facts = BASES[name]
    if name == "llava-next-vicuna-7b":
        config = {
            "architectures": ["LlavaNextForConditionalGeneration"], "ignore_index": -100,
            "image_grid_pinpoints": LLAVA_NEXT_PINPOINTS, "image_token_index": 32000, "model_type": "llava_next",
            "pad_token_id": 32001, "projector_hidden_act": "gelu",
            "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                            "max_position_embeddings": 4096, "model_type": "llama", "pad_token_id": 0,
                            "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064,
                            **LLM, "num_key_value_heads": LLM["num_attention_heads"]},
            "tie_word_embeddings": False, "torch_dtype": dtype, "use_image_newline_parameter": True,
            "vision_config": {"image_size": 336, "model_type": "clip_vision_model", "patch_size": 14,
                              "projection_dim": PROJECTION, "vocab_size": 32000, **VISION},
            "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}
        generation = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    elif facts.model_class == "LlavaOnevisionForConditionalGeneration":
        config = {
            "architectures": ["LlavaOnevisionForConditionalGeneration"], "ignore_index": -100,
            "image_grid_pinpoints": ONEVISION_PINPOINTS, "image_token_index": 151646, "model_type": "llava_onevision",
            "multimodal_projector_bias": True, "projector_hidden_act": "gelu",
            "text_config": {"_name_or_path": "Qwen/Qwen2-7B-Instruct", "architectures": ["Qwen2ForCausalLM"],
                            "bos_token_id": 151643, "eos_token_id": 151645, "model_type": "qwen2",
                            "num_key_value_heads": 2, "rope_theta": 1000000.0, "torch_dtype": "bfloat16",
                            "vocab_size": 152128, **LLM},
            "tie_word_embeddings": False, "torch_dtype": dtype, "use_image_newline_parameter": True,
            "video_token_index": 151647, "vision_aspect_ratio": "anyres_max_9",
            "vision_config": {"image_size": 384, "model_type": "siglip_vision_model", "patch_size": 14,
                              "vision_use_head": False, **VISION},
            "vision_feature_layer": -1, "vision_feature_select_strategy": "full"}
        generation = {"_from_model_config": True, "bos_token_id": 151643, "eos_token_id": 151645}
    else:
        config = {
            "architectures": ["InternVLForConditionalGeneration"], "downsample_ratio": 0.5, "image_seq_length": 256,
            "image_token_id": 151667, "model_type": "internvl", "projector_hidden_act": "gelu",
            "text_config": {
                "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
                "eos_token_id": 151645, "hidden_act": "silu", "initializer_range": 0.02,
                "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2",
                "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
                "rope_scaling": {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}, "rope_theta": 1000000.0,
                "sliding_window": None, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
                "vocab_size": 151674, **LLM},
            "tie_word_embeddings": False, "torch_dtype": dtype,
            "vision_config": {
                "architectures": ["InternVisionModel"], "attention_bias": True, "attention_dropout": 0.0,
                "dropout": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "image_size": [448, 448],
                "initializer_factor": 0.1, "layer_norm_eps": 1e-06, "layer_scale_init_value": 0.1,
                "model_type": "internvl_vision", "norm_type": "layer_norm", "num_channels": 3, "patch_size": [14, 14],
                "projection_dropout": 0.0, "torch_dtype": "bfloat16", "use_absolute_position_embeddings": True,
                "use_mask_token": False, "use_mean_pooling": True, "use_qk_norm": False, **VISION},
            "vision_feature_layer": -1, "vision_feature_select_strategy": "default"}
        generation = {"_from_model_config": True, "bos_token_id": 151643, "eos_token_id": 151645}
    config["transformers_version"] = generation["transformers_version"] = _version()
    return config, generation


def _tower_config(name: str) -> dict:
    if name == "clip-vit-large-patch14-336":
        return {
            "architectures": ["CLIPModel"], "initializer_factor": 1.0, "logit_scale_init_value": 2.6592,
            "model_type": "clip", "projection_dim": PROJECTION,
            "text_config": {"bos_token_id": 0, "eos_token_id": 2, "hidden_act": "quick_gelu",
                            "max_position_embeddings": 77, "model_type": "clip_text_model", "pad_token_id": 1,
                            "projection_dim": PROJECTION, "vocab_size": 49408, **VISION},
            "torch_dtype": "float32", "transformers_version": _version(),
            "vision_config": {"hidden_act": "quick_gelu", "image_size": 336, "model_type": "clip_vision_model",
                              "patch_size": 14, "projection_dim": PROJECTION, **VISION}}
    return {
        "architectures": ["SiglipModel"], "initializer_factor": 1.0, "model_type": "siglip",
        "text_config": {"model_type": "siglip_text_model", **VISION},
        "torch_dtype": "float32", "transformers_version": _version(),
        "vision_config": {"image_size": 384, "model_type": "siglip_vision_model", "patch_size": 14,
                          **VISION, "num_hidden_layers": VISION["num_hidden_layers"] + 1}}


def _tower_files(name: str) -> dict[str, str | bytes]:
    if name == "clip-vit-large-patch14-336":
        files = dict(_clip_files())
        files["tokenizer_config.json"] = _json({
            "add_prefix_space": False,
            "added_tokens_decoder": {"49406": _added("<|startoftext|>", normalized=True),
                                     "49407": _added("<|endoftext|>")},
            "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": False, "do_lower_case": True,
            "eos_token": "<|endoftext|>", "errors": "replace", "extra_special_tokens": {}, "model_max_length": 77,
            "pad_token": "<|endoftext|>", "processor_class": "CLIPProcessor", "tokenizer_class": "CLIPTokenizer",
            "unk_token": "<|endoftext|>"})
        files["special_tokens_map.json"] = _json({
            "bos_token": _token_dict("<|startoftext|>", normalized=True),
            "eos_token": _token_dict("<|endoftext|>", normalized=True), "pad_token": "<|endoftext|>",
            "unk_token": _token_dict("<|endoftext|>", normalized=True)})
        files["preprocessor_config.json"] = _json({
            "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
            "resample": 3, "size": 336})
        return files
    strip = dict(strip=True)
    return {
        "spiece.model": _siglip_spiece(),
        "tokenizer_config.json": _json({
            "added_tokens_decoder": {"1": _added("</s>", **strip), "2": _added("<unk>", **strip)},
            "additional_special_tokens": [], "clean_up_tokenization_spaces": True, "do_lower_case": True,
            "eos_token": "</s>", "model_input_names": ["input_ids"], "model_max_length": 64, "pad_token": "</s>",
            "processor_class": "SiglipProcessor", "sp_model_kwargs": {}, "tokenizer_class": "SiglipTokenizer",
            "unk_token": "<unk>"}),
        "special_tokens_map.json": _json({"eos_token": _token_dict("</s>", **strip),
                                          "pad_token": _token_dict("</s>", **strip),
                                          "unk_token": _token_dict("<unk>", **strip)}),
        "preprocessor_config.json": _json({
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
            "processor_class": "SiglipProcessor", "resample": 3, "rescale_factor": 1 / 255,
            "size": {"height": 384, "width": 384}})}


# ------------------------------------------------------------------------------------------------ writing


def _prepare(directory) -> Path:
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_files(out: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        if isinstance(content, bytes):
            (out / name).write_bytes(content)
        else:
            (out / name).write_text(content, encoding="utf-8")


def _write_weights(out: Path, model_class, seed: int, dtype: torch.dtype, shards: int, init=None) -> None:
    """Random weights (fixed seed) of the architecture out/config.json describes, written by save_pretrained;
    its config.json and generation_config.json are not taken (out keeps the Hub-format ones)."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(seed)
    model = model_class(config)
    if init is not None:
        with torch.no_grad():
            init(model)
    model = model.to(dtype).eval()
    total = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    with tempfile.TemporaryDirectory(dir=out, prefix=".weights-") as tmp:
        shard = f"{math.ceil(total / shards / 1e6) + 1}MB" if shards > 1 else f"{total // 10**6 + 100}MB"
        model.save_pretrained(tmp, max_shard_size=shard)
        for path in Path(tmp).iterdir():
            if path.name.endswith(".safetensors") or path.name.endswith(".safetensors.index.json"):
                os.replace(path, out / path.name)


def write_base(name: str, directory, dtype: torch.dtype | str | None = None) -> Path:
    """Write the tiny Hub-shaped folder of base `name` (a key of BASES) into `directory` (created; must not exist
    or be empty); returns its path. `dtype`: of the weights and config torch_dtype, the Hub's (BaseFacts.dtype)
    by default."""
    import transformers
    if name not in BASES:
        raise KeyError(f"unknown base {name!r}; one of {', '.join(BASES)}")
    facts = BASES[name]
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or getattr(torch, facts.dtype))
    out = _prepare(directory)
    config, generation = _base_config(name, str(dtype).removeprefix("torch."))
    _write_files(out, {"config.json": _json(config), **_tokenizer_files(name), **_processor_files(name)})
    _write_weights(out, getattr(transformers, facts.model_class), SEEDS[name], dtype, shards=3)
    (out / "generation_config.json").write_text(_json(generation), encoding="utf-8")
    return out


def write_tower(name: str, directory) -> Path:
    """Write the tiny Hub-shaped folder of dual model `name` (a key of TOWERS) into `directory`; returns it."""
    import transformers
    if name not in TOWERS:
        raise KeyError(f"unknown tower {name!r}; one of {', '.join(TOWERS)}")
    out = _prepare(directory)
    _write_files(out, {"config.json": _json(_tower_config(name)), **_tower_files(name)})

    def init(model):        # the real checkpoints' learned temperatures (and SigLIP's bias)
        if name.startswith("clip"):
            model.logit_scale.fill_(math.log(100.0))
        else:
            model.logit_scale.fill_(math.log(117.33))
            model.logit_bias.fill_(-12.93)
    _write_weights(out, getattr(transformers, TOWERS[name].model_class), SEEDS[name], torch.float32, shards=1,
                   init=init)
    return out


def write_pair(base: str, directory) -> tuple[Path, Path]:
    """A base and its PAIRS tower, in directory/base and directory/tower."""
    root = Path(directory)
    return write_base(base, root / base), write_tower(PAIRS[base], root / PAIRS[base])


# the real widths of the towers (for measuring convert's memory at full width; the depths stay shrunk)
FULL_WIDTH = {"llava-onevision-qwen2-7b-ov": (dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28),
                                               dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16))}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a Hub-shaped base and its tower to DIR/base and DIR/tower.")
    parser.add_argument("base", choices=sorted(BASES))
    parser.add_argument("directory")
    parser.add_argument("--full-width", action="store_true", help=f"real widths (bases: {', '.join(FULL_WIDTH)})")
    args = parser.parse_args()
    if args.full_width:
        if args.base not in FULL_WIDTH:
            parser.error(f"--full-width: one of {', '.join(FULL_WIDTH)}")
        LLM.update(FULL_WIDTH[args.base][0])
        VISION.update(FULL_WIDTH[args.base][1])
    write_base(args.base, Path(args.directory) / "base")
    write_tower(PAIRS[args.base], Path(args.directory) / "tower")

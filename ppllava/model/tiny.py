"""A tiny PPLLaVA checkpoint made offline: the `tiny` architecture, random weights, trained tokenizers.

Tests, the tiny training recipe and the demo start from it; it has the layout of a converted
checkpoint (config.json, model.safetensors, the LLM tokenizer, prompt_tokenizer/), so every code path
that reads a real checkpoint reads this one. The tokenizers are byte-level BPEs trained in well under a
second on a fixed corpus: the same files on every machine, nothing downloaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .checkpoint import PROMPT_TOKENIZER_DIR
from .factory import build_model, load_config

CORPUS = ["what happens in the video after the man opens the door",
          "describe the image in detail", "how many people are there", "the cat sits on the red mat",
          "a person is cooking food in a small kitchen while music plays"] * 20

# Qwen2's ChatML template, reduced: a default system prompt, then <|im_start|>role\ncontent<|im_end|>\n
CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
          "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer(vocab_size: int, specials: list[str], bos: str | None, eos: str, extra: tuple[str, ...] = (),
                   corpus: list[str] = CORPUS) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer; specials get ids 0.., `extra` tokens are added after the vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))   # no blank lines on stdout
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos)
    fast.add_special_tokens({"additional_special_tokens": list(extra)})
    return fast


def llm_tokenizer(corpus: list[str] = CORPUS, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """The tiny LLM tokenizer: ChatML specials, <image> / <video> after the vocabulary, a chat template."""
    tokenizer = make_tokenizer(vocab_size, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|endoftext|>",
                               extra=("<image>", "<video>"), corpus=corpus)
    tokenizer.chat_template = CHATML
    return tokenizer


def clip_tokenizer(max_length: int, corpus: list[str] = CORPUS, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """The tiny CLIP-text tokenizer: <|startoftext|> (0) ... <|endoftext|> (1), padded with <|endoftext|>."""
    tokenizer = make_tokenizer(vocab_size, ["<|startoftext|>", "<|endoftext|>"], "<|startoftext|>", "<|endoftext|>",
                               corpus=corpus)
    tokenizer.model_max_length = max_length
    return tokenizer


def use_token_ids(config, tokenizer, prompt_tokenizer=None) -> None:
    """Point a config's special tokens at the tiny tokenizers' (llm_tokenizer; clip_tokenizer where given): the
    placeholders <image> / <video>; as Qwen2-Instruct, a turn's end ends the answer and <|endoftext|> pads."""
    config.image_token_id, config.video_token_id = tokenizer.convert_tokens_to_ids(["<image>", "<video>"])
    text = config.text_config
    text.eos_token_id, text.pad_token_id = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    text.bos_token_id = None
    if prompt_tokenizer is not None:
        prompt = config.prompt_config
        prompt.bos_token_id, prompt.eos_token_id = prompt_tokenizer.bos_token_id, prompt_tokenizer.eos_token_id
        prompt.pad_token_id = prompt_tokenizer.pad_token_id


def save_tiny_checkpoint(directory: str | Path, seed: int = 0, corpus: list[str] = CORPUS,
                         architecture: str = "tiny", vocab_size: int = 300, overrides: dict | None = None) -> Path:
    """Write a random checkpoint of a tiny `architecture` (configs/model/) with tokenizers of at most
    `vocab_size` tokens trained on `corpus` to `directory` (must not exist or be empty); returns the path.
    `overrides`: PPLLaVAConfig fields set before the weights are made (e.g. btadapter_depth: the adapter's too)."""
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder")
    tokenizer = llm_tokenizer(corpus, vocab_size)
    config = load_config(architecture)
    use_token_ids(config, tokenizer)
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    config.check()
    model = build_model(config, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.partial-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        clip_tokenizer(config.prompt_config.max_position_embeddings, corpus, vocab_size).save_pretrained(Path(tmp) / PROMPT_TOKENIZER_DIR)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    return out

"""The chat format convert keeps: where a base's template is read from, the named defaults (checked against the
prompts the Hub's own templates render, written out by hand), and typed content parts."""

from __future__ import annotations

import json

import pytest
from tokenizers import AddedToken

from ppllava.data import ChatEncoder, DataError
from ppllava.data.chat import content_style
from ppllava.model.chat_format import base_chat_template, default_template, visual_wrap_tokens
from ppllava.model.tiny import llm_tokenizer

IMAGE_QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]}]
VIDEO_QUESTION = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why is this video funny?"}]}]
TURNS = [{"role": "system", "content": [{"type": "text", "text": "SYS"}]},
         {"role": "user", "content": [{"type": "text", "text": "Q1"}, {"type": "image"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
         {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q2"}]}]


def with_template(template):
    tokenizer = llm_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("name,messages,expected", [
    # what the transformers test of llava-hf/llava-v1.6-vicuna-7b-hf's processor expects
    ("llava-vicuna", IMAGE_QUESTION, "USER: <image>\nWhat is shown in this image? ASSISTANT:"),
    ("llava-vicuna", TURNS, "SYS USER: <image>\nQ1 ASSISTANT: A1 USER: <image>\n<image>\nQ2 ASSISTANT:"),
    # llava-hf/llava-onevision-qwen2-*-hf: a space after the role, no newline after <|im_end|>
    ("llava-chatml", IMAGE_QUESTION, "<|im_start|>user <image>\nWhat is shown in this image?<|im_end|>"
                                     "<|im_start|>assistant\n"),
    ("llava-chatml", VIDEO_QUESTION, "<|im_start|>user <video>\nWhy is this video funny?<|im_end|><|im_start|>assistant\n"),
    ("llava-chatml", TURNS, "<|im_start|>system \nSYS<|im_end|><|im_start|>user <image>\nQ1<|im_end|><|im_start|>assistant"
                            " \nA1<|im_end|><|im_start|>user <image><image>\nQ2<|im_end|><|im_start|>assistant\n"),
    # OpenGVLab/InternVL3-*-hf: parts in the given order, <IMG_CONTEXT> on its own line
    ("internvl-chatml", IMAGE_QUESTION, "<|im_start|>user\n<IMG_CONTEXT>\nWhat is shown in this image?<|im_end|>\n"
                                        "<|im_start|>assistant\n"),
    ("internvl-chatml", [{"role": "user", "content": "plain string"}],
     "<|im_start|>user\nplain string<|im_end|>\n<|im_start|>assistant\n"),
])
def test_the_default_templates_render_what_the_hub_templates_render(name, messages, expected):
    tokenizer = with_template(default_template(name))
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    assert content_style(tokenizer) == "parts"


def test_the_processors_template_wins_over_the_tokenizers(tmp_path):
    tokenizer = with_template("{{ 'TOKENIZER' }}")
    assert base_chat_template(tmp_path, tokenizer, "llava_onevision") == ("{{ 'TOKENIZER' }}", "tokenizer_config.json")
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ 'PROCESSOR' }}"}))
    assert base_chat_template(tmp_path, tokenizer, "llava_onevision")[0] == "{{ 'PROCESSOR' }}"
    (tmp_path / "chat_template.jinja").write_text("{{ 'JINJA' }}")
    assert base_chat_template(tmp_path, tokenizer, "llava_onevision") == ("{{ 'JINJA' }}", "chat_template.jinja")
    template, source = base_chat_template(tmp_path / "none", with_template(None), "llava_next")
    assert template == default_template("llava-vicuna") and "llava_next default 'llava-vicuna'" in source
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "chat_template.json").write_text(json.dumps({"template": "x"}))
    with pytest.raises(ValueError, match="holds no chat template"):
        base_chat_template(tmp_path, tokenizer, "llava_onevision")


def test_a_typed_template_writes_the_media_itself():
    """With LLaVA-OneVision's format the template places the marks (images before videos, whatever the order
    of the parts); each mark is expanded to its own medium's run."""
    tokenizer = with_template(default_template("llava-chatml"))
    image, video = tokenizer.convert_tokens_to_ids(["<image>", "<video>"])
    encoder = ChatEncoder(tokenizer, image, video)
    assert encoder.style == "parts"
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "ok"}]
    assert encoder.render(messages) == "<|im_start|>user <image><video>\nhi<|im_end|><|im_start|>assistant \nok<|im_end|>"
    out = encoder.encode(messages, [[video] * 3, [image] * 2])          # runs in the order of the parts
    ids = out.input_ids.tolist()
    start = ids.index(image)
    assert ids[start:start + 5] == [image] * 2 + [video] * 3
    answer = [t for t, label in zip(ids, out.labels.tolist()) if label != -100]
    assert tokenizer.decode(answer) == " \nok<|im_end|>"


def test_a_model_without_a_video_token_writes_videos_as_images():
    tokenizer = with_template(default_template("llava-vicuna"))       # no video in LLaVA-NeXT's format
    image = tokenizer.convert_tokens_to_ids("<image>")
    encoder = ChatEncoder(tokenizer, image, None)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens"}]}]
    assert encoder.render(messages, add_generation_prompt=True) == "USER: <image>\nwhat happens ASSISTANT:"


def test_a_template_that_writes_another_mark_is_refused():
    tokenizer = with_template(default_template("internvl-chatml"))    # writes <IMG_CONTEXT>, which this one lacks
    image, video = tokenizer.convert_tokens_to_ids(["<image>", "<video>"])
    with pytest.raises(DataError, match="does not write a image as the one token"):
        ChatEncoder(tokenizer, image, video)


def test_internvl_wraps_each_run_and_needs_the_tokens():
    tokenizer = llm_tokenizer()
    assert visual_wrap_tokens(tokenizer, "llava_next") == {}
    with pytest.raises(ValueError, match="has no '<img>' token"):
        visual_wrap_tokens(tokenizer, "internvl")
    tokenizer.add_tokens([AddedToken("<img>", special=True), AddedToken("</img>", special=True)], special_tokens=True)
    wrap = visual_wrap_tokens(tokenizer, "internvl")
    assert tokenizer.convert_ids_to_tokens([wrap["visual_start_token_id"], wrap["visual_end_token_id"]]) == ["<img>", "</img>"]


def test_answers_a_template_leaves_open_end_with_eos_and_learn_it():
    """llava-hf's Vicuna template writes no end of turn: each answer gets the LLM's EOS, in the labels too; a
    ChatML template ends turns with <|im_end|> and gets nothing added."""
    vicuna = with_template(default_template("llava-vicuna"))
    vicuna.eos_token = "<|im_end|>"                                    # stands for Vicuna's </s>
    image, eos = vicuna.convert_tokens_to_ids(["<image>", "<|im_end|>"])
    encoder = ChatEncoder(vicuna, image, None)
    assert encoder.close_turns and encoder.turn_end_token() is None
    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "the cat"},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a mat"}]
    out = encoder.encode(messages, [])
    ids, labels = out.input_ids.tolist(), out.labels.tolist()
    answers, current = [], []
    for token, label in zip(ids, labels):
        if label != -100:
            current.append(token)
        elif current:
            answers.append(current)
            current = []
    if current:
        answers.append(current)
    assert [vicuna.decode(a) for a in answers] == [" the cat <|im_end|>", " a mat <|im_end|>"]
    assert ids.count(eos) == 2 and ids[-1] == eos
    chatml = with_template(default_template("llava-chatml"))
    chatml_encoder = ChatEncoder(chatml, *chatml.convert_tokens_to_ids(["<image>", "<video>"]))
    assert not chatml_encoder.close_turns and chatml_encoder.turn_end_token() == eos
    plain = chatml_encoder.encode(messages, [])
    assert plain.input_ids.tolist().count(eos) == 4                    # the template's own, one a turn

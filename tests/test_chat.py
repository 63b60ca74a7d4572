"""Chat-template encoding: labels on the assistant turns only, placeholder runs, the length policy."""

import pytest
import torch
from tiny_checkpoints import llm_tokenizer

from ppllava.data.chat import IGNORE, ChatEncoder, TooLong
from ppllava.data.errors import DataError

IMAGE, VIDEO = 300, 301


@pytest.fixture(scope="module")
def tokenizer():
    return llm_tokenizer()


def text(s):
    return {"type": "text", "text": s}


CHAT = [
    {"role": "user", "content": [{"type": "video"}, text("what happens in the video")]},
    {"role": "assistant", "content": [text("the cat sits on the red mat")]},
    {"role": "user", "content": [text("how many people are there")]},
    {"role": "assistant", "content": [text("two")]},
]


def test_labels_are_exactly_the_answers_and_end_of_turn(tokenizer):
    enc = ChatEncoder(tokenizer, IMAGE, VIDEO).encode(CHAT, [[VIDEO] * 5])
    learned = enc.labels[enc.labels != IGNORE]
    assert tokenizer.decode(learned) == "the cat sits on the red mat<|im_end|>\ntwo<|im_end|>\n"
    assert torch.equal(enc.labels[enc.labels != IGNORE], enc.input_ids[enc.labels != IGNORE])
    # a second reader: the ChatML text written out by hand (the template's default system prompt first, the
    # video mark on its own line before the question), tokenized, the mark expanded to its run by hand
    by_hand = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
               "<|im_start|>user\n<video>\nwhat happens in the video<|im_end|>\n"
               "<|im_start|>assistant\nthe cat sits on the red mat<|im_end|>\n"
               "<|im_start|>user\nhow many people are there<|im_end|>\n"
               "<|im_start|>assistant\ntwo<|im_end|>\n")
    assert ChatEncoder(tokenizer, IMAGE, VIDEO).render(CHAT) == by_hand
    ids = tokenizer(by_hand, add_special_tokens=False)["input_ids"]
    at = ids.index(VIDEO)
    assert ids.count(VIDEO) == 1 and enc.input_ids.tolist() == ids[:at] + [VIDEO] * 5 + ids[at + 1:]
    # the labels, by hand: the two answers with their end of turn learned, everything else ignored
    first, second = "the cat sits on the red mat<|im_end|>\n", "two<|im_end|>\n"
    pieces = [(by_hand[:by_hand.index(first)], False), (first, True),
              (by_hand[by_hand.index(first) + len(first):by_hand.index(second)], False), (second, True)]
    labels = []
    for piece, learned in pieces:
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        piece_ids = [t for i in piece_ids for t in ([i] * 5 if i == VIDEO else [i])]
        labels += piece_ids if learned else [IGNORE] * len(piece_ids)
    assert enc.labels.tolist() == labels
    assert (enc.input_ids == VIDEO).sum() == 5 and (enc.labels[enc.input_ids == VIDEO] == IGNORE).all()


def test_generation_prompt_has_no_labels_and_ends_with_the_assistant_header(tokenizer):
    encoder = ChatEncoder(tokenizer, IMAGE, VIDEO)
    enc = encoder.encode(CHAT[:1], [[VIDEO] * 2], add_generation_prompt=True)
    assert (enc.labels == IGNORE).all()
    assert tokenizer.decode(enc.input_ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_media_mark_errors(tokenizer):
    encoder = ChatEncoder(tokenizer, IMAGE, VIDEO)
    with pytest.raises(DataError, match="more media marks than its 0 media"):
        encoder.encode(CHAT, [])
    with pytest.raises(DataError, match="marks 1 media but 2 were given"):
        encoder.encode(CHAT, [[VIDEO], [IMAGE]])
    with pytest.raises(DataError, match="does not match its placeholder run of token 300"):
        encoder.encode(CHAT, [[IMAGE] * 3])


def test_tokenizer_checks(tokenizer):
    with pytest.raises(DataError, match=r"does not encode '<image>' as the one token 510"):
        ChatEncoder(tokenizer, 510, 511)
    bare = llm_tokenizer()
    bare.chat_template = None
    with pytest.raises(DataError, match="has no chat template"):
        ChatEncoder(bare, IMAGE, VIDEO)
    encoder = ChatEncoder(tokenizer, IMAGE, None)            # no video token: videos use <image>
    assert (encoder.encode(CHAT, [[IMAGE] * 4]).input_ids == IMAGE).sum() == 4


def test_length_policy_drops_trailing_media_free_turns_then_refuses(tokenizer):
    encoder = ChatEncoder(tokenizer, IMAGE, VIDEO)
    full = encoder.encode(CHAT, [[VIDEO] * 5])
    first = encoder.encode(CHAT[:2], [[VIDEO] * 5])
    kept = encoder.encode_fitting(CHAT, [[VIDEO] * 5], max_length=len(full.input_ids) - 1)
    assert torch.equal(kept.input_ids, first.input_ids) and len(kept.messages) == 2
    assert torch.equal(encoder.encode_fitting(CHAT, [[VIDEO] * 5], len(full.input_ids)).input_ids, full.input_ids)
    with pytest.raises(TooLong, match=rf"{len(first.input_ids)} tokens \(with 5 visual\) exceed max_length"):
        encoder.encode_fitting(CHAT, [[VIDEO] * 5], max_length=len(first.input_ids) - 1)
    # a trailing turn that holds a medium is never dropped on its own
    chat = CHAT[:2] + [{"role": "user", "content": [{"type": "image"}, text("and this?")]},
                       {"role": "assistant", "content": [text("a cat")]}]
    with pytest.raises(TooLong):
        encoder.encode_fitting(chat, [[VIDEO] * 5, [IMAGE] * 2], max_length=len(first.input_ids) + 3)

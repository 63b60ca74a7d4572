"""The prompt tower sees the current user question only: never answers, never the system prompt."""

import pytest

from ppllava.conversation import current_question, pooling_prompt

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is the man holding?"}]},
    {"role": "assistant", "content": "A red umbrella."},
    {"role": "user", "content": "  And what does he do next?  "},
    {"role": "assistant", "content": "He opens the door."},
]


def test_last_user_question_by_default():
    assert current_question(CHAT) == "And what does he do next?"


def test_a_given_turn_and_visual_parts_dropped():
    assert current_question(CHAT, turn=0) == "What is the man holding?"


def test_errors():
    with pytest.raises(ValueError, match="no user message"):
        current_question(CHAT[:1])
    with pytest.raises(ValueError, match="turn 2 does not exist: the conversation has 2 user message"):
        current_question(CHAT, turn=2)


def test_pooling_prompt_is_the_questions_so_far_without_answers_or_system():
    assert pooling_prompt(CHAT) == "What is the man holding?\nAnd what does he do next?"
    assert pooling_prompt(CHAT, turn=0) == "What is the man holding?"
    assert "umbrella" not in pooling_prompt(CHAT) and "helpful" not in pooling_prompt(CHAT)
    with pytest.raises(ValueError, match="no user message"):
        pooling_prompt(CHAT[:1])

"""Which text of a conversation reaches the prompt (CLIP/SigLIP text) tower.

The user's questions, never the answers, never the system prompt, and the same text in training and
inference (the original code fed the whole conversation, answers included, during training, but only
the question at test time). At turn k that is the user questions of turns 0..k joined by newlines:
the current question plus the ones it may refer back to. A training sample of several turns is pooled
once, with the questions of all its turns: exactly what inference sees at its last turn.
Messages are chat-template dicts: {"role": ..., "content": str | [{"type": "text", "text": ...}, {"type": "video"}, ...]}.
"""

from __future__ import annotations


def message_text(message: dict) -> str:
    content = message.get("content", "")
    if isinstance(content, str):
        return content.strip()
    return " ".join(part["text"].strip() for part in content if part.get("type") == "text" and part.get("text"))


def _questions(messages: list[dict], turn: int | None) -> list[str]:
    questions = [message_text(m) for m in messages if m.get("role") == "user"]
    if not questions:
        raise ValueError("conversation has no user message: the pooling needs the user's question")
    index = len(questions) - 1 if turn is None else turn
    if not 0 <= index < len(questions):
        raise ValueError(f"turn {turn} does not exist: the conversation has {len(questions)} user message(s)")
    return questions[:index + 1]


def current_question(messages: list[dict], turn: int | None = None) -> str:
    """The text of the user message of `turn` (0-based among user messages; default the last one)."""
    return _questions(messages, turn)[-1]


def pooling_prompt(messages: list[dict], turn: int | None = None) -> str:
    """The prompt tower's text at `turn` (default the last): the user questions up to it, one a line."""
    return "\n".join(q for q in _questions(messages, turn) if q)

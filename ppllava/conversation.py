"""Which text of a conversation reaches the prompt (CLIP/SigLIP text) tower.

Always the user's question of the current turn, in training and inference alike: never the answers,
never the system prompt (the original code fed the whole conversation during training).
Messages are chat-template dicts: {"role": ..., "content": str | [{"type": "text", "text": ...}, {"type": "video"}, ...]}.
"""

from __future__ import annotations


def message_text(message: dict) -> str:
    content = message.get("content", "")
    if isinstance(content, str):
        return content.strip()
    return " ".join(part["text"].strip() for part in content if part.get("type") == "text" and part.get("text"))


def current_question(messages: list[dict], turn: int | None = None) -> str:
    """The text of the user message of `turn` (0-based among user messages; default the last one)."""
    questions = [message_text(m) for m in messages if m.get("role") == "user"]
    if not questions:
        raise ValueError("conversation has no user message: the pooling needs the user's question")
    index = len(questions) - 1 if turn is None else turn
    if not 0 <= index < len(questions):
        raise ValueError(f"turn {turn} does not exist: the conversation has {len(questions)} user message(s)")
    return questions[index]

"""The multiple-choice prompt, the letter in a model's answer, and accuracy overall and per category."""

from __future__ import annotations

import re
from collections import defaultdict

from .formats import LETTERS, Question

INSTRUCTION = "Answer with the option's letter from the given choices directly."


def mc_prompt(q: Question) -> str:
    options = "\n".join(f"({LETTERS[i]}) {text}" for i, text in enumerate(q.options))
    return f"{q.question}\nOptions:\n{options}\n{INSTRUCTION}"


def pooling_text(q: Question) -> str:
    """What the prompt tower reads: the question and its options, not the answer-format instruction."""
    return "\n".join([q.question, *q.options])


def extract_choice(text: str, options: tuple[str, ...]) -> int | None:
    """The option an answer names: a letter ("B", "(B)", "B.", "Answer: B", "The answer is B"), else the one
    option whose text it contains; None when it names none or several."""
    letters = LETTERS[:len(options)]
    text = text.strip()
    patterns = (rf"^\(?([{letters}])\)?(?:[.:)\s]|$)",                                  # leads with the letter
                rf"(?i:answer|option|choice)\s*(?:(?i:is)|:)?\s*\(?([{letters}])\)?(?![A-Za-z])",  # names it
                rf"\(([{letters}])\)")                                                     # (B) anywhere
    for pattern in patterns:
        found = set(re.findall(pattern, text))
        if len(found) == 1:
            return letters.index(found.pop())
    named = [i for i, option in enumerate(options) if option.strip() and option.strip().lower() in text.lower()]
    return named[0] if len(named) == 1 else None


def accuracy(rows: list[dict]) -> dict:
    """rows of {"category", "correct": bool | None}: overall and per-category accuracy over scored rows."""
    scored = [r for r in rows if r["correct"] is not None]
    by_category: dict[str, list[bool]] = defaultdict(list)
    for r in scored:
        by_category[r["category"]].append(r["correct"])
    return {"accuracy": sum(r["correct"] for r in scored) / len(scored) if scored else None,
            "scored": len(scored), "total": len(rows),
            "unparsed": sum(1 for r in rows if r["choice"] is None),
            "per_category": {c: {"accuracy": sum(v) / len(v), "n": len(v)} for c, v in sorted(by_category.items())}}

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
    """The option an answer names: "Answer: B" / "the answer is (B)", else "(B)", else a leading "B", "B.",
    "B)" or "B:", else the one option whose text it contains as whole words (the longest such option when
    one contains another); None when it names none or several."""
    letters = LETTERS[:len(options)]
    text = text.strip()
    patterns = (rf"(?i:answer|option|choice)\s*(?:(?i:is)|:)?\s*\(?([{letters}])\)?(?![A-Za-z])",  # names it
                rf"\(([{letters}])\)",                                                     # (B) anywhere
                rf"^([{letters}])(?:[.:)]|$)")                                              # leads with B. or is B
    for pattern in patterns:
        found = re.findall(pattern, text)
        if found:
            return letters.index(found[0]) if len(set(found)) == 1 else None
    named = [i for i, option in enumerate(options) if option.strip() and
             re.search(rf"(?<!\w){re.escape(option.strip())}(?!\w)", text, flags=re.IGNORECASE)]
    named = [i for i in named if not any(j != i and options[i].strip().lower() in options[j].strip().lower()
                                         for j in named)]                       # "12" over "2"
    return named[0] if len(named) == 1 else None


def _breakdown(rows: list[dict], key: str) -> dict:
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        if r.get(key) is not None:
            groups[r[key]].append(r["correct"])
    return {g: {"accuracy": sum(v) / len(v), "n": len(v)} for g, v in sorted(groups.items())}


def accuracy(rows: list[dict]) -> dict:
    """rows of {"category", optional "group", "choice", "correct": bool | None}: accuracy over the scored rows,
    overall, per category and per group (e.g. Video-MME's durations)."""
    scored = [r for r in rows if r["correct"] is not None]
    return {"accuracy": sum(r["correct"] for r in scored) / len(scored) if scored else None,
            "scored": len(scored), "total": len(rows),
            "unparsed": sum(1 for r in rows if r["choice"] is None and "error" not in r),
            "per_category": _breakdown(scored, "category"), "per_group": _breakdown(scored, "group")}

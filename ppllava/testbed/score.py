"""Accuracy of a checkpoint on a test bed split, per pooling mode, question kind, and rare vs common.

Each clip is read and run through the vision tower once; every pooling mode then answers every
question about it from the same patches (pooling_mode is a config switch: "prompt" is PPLLaVA,
"average" is avg_pool3d with the same kernel, i.e. the same token budget, "none" keeps all patches).
An answer is right when its first word is the record's answer word.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from . import synthetic

MODES = ("prompt", "average", "none")
CHANCE = {"when": 1 / (len(synthetic.PHASES) + 1), "present": 1 / 2}


def first_word(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


def chance(rows: list[dict]) -> float:
    """Expected accuracy of guessing uniformly among each question's possible answers."""
    return sum(CHANCE[r["kind"]] for r in rows) / len(rows) if rows else 0.0


def summarize(rows: list[dict]) -> dict:
    """Accuracy overall, per kind, on rare / common questions, with the chance level beside each."""
    def acc(subset):
        return {"accuracy": sum(r["correct"] for r in subset) / len(subset) if subset else None,
                "questions": len(subset), "chance": chance(subset)}
    kinds = defaultdict(list)
    for r in rows:
        kinds[r["kind"]].append(r)
    return {**acc(rows), "rare": acc([r for r in rows if r["rare"]]),
            "common": acc([r for r in rows if not r["rare"]]),
            "per_kind": {k: acc(kinds[k]) for k in synthetic.KINDS if k in kinds}}


def answer_in_modes(pipeline, visual, question: str, truth: str, modes) -> dict:
    """{mode: {"said", "correct", "visual_tokens", "seconds"}}: `question` about `visual` (patches read
    once) answered with each pooling mode in turn; the model's own mode is restored after."""
    config = pipeline.model.config
    saved, out = config.pooling_mode, {}
    try:
        for mode in modes:
            config.pooling_mode = mode
            start = time.perf_counter()
            answer = pipeline.ask(visual, question, max_new_tokens=4)
            out[mode] = {"said": answer.text, "correct": first_word(answer.text) == truth,
                         "visual_tokens": answer.visual_tokens, "seconds": time.perf_counter() - start}
    finally:
        config.pooling_mode = saved
    return out


def score(pipeline, root: str | Path, split: str = "test", modes=MODES, limit: int | None = None,
          progress: bool = True) -> dict:
    """{mode: summary} for the checkpoint in `pipeline` on `split` of the test bed at `root`."""
    root = Path(root)
    records = [r for r in json.loads((root / f"{split}.json").read_text()) if r["kind"] in synthetic.KINDS]
    by_clip = defaultdict(list)
    for r in records:
        by_clip[r["clip"]].append(r)
    clips = sorted(by_clip)[:limit]
    rows = {mode: [] for mode in modes}
    for clip in tqdm(clips, desc=f"scoring {split}", unit="clip", disable=not progress):
        visual = pipeline.read(root / "media" / synthetic.clip_dir(split, clip), frames=pipeline.frames)
        for r in by_clip[clip]:
            question = r["conversations"][0]["value"].removeprefix("<video>\n")
            for mode, a in answer_in_modes(pipeline, visual, question, r["answer"], modes).items():
                rows[mode].append({"id": r["id"], "kind": r["kind"], "rare": r["rare"], "answer": r["answer"], **a})
    return {mode: {**summarize(rows[mode]), "visual_tokens": rows[mode][0]["visual_tokens"] if rows[mode] else None,
                   "seconds_per_question": sum(r["seconds"] for r in rows[mode]) / max(1, len(rows[mode])),
                   "rows": rows[mode]}
            for mode in modes}

"""`ppllava demo`: a test bed checkpoint answers questions about clips it has never seen.

Fresh clips are drawn from a seed (printed; pass it back to see the same clips), rendered in memory
and read by the vision tower once each; every question is answered with prompt-guided pooling and,
on the same patches, with average pooling at the same token budget. The relevance map of one
question about the shape that is there only briefly is drawn to a PNG.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ppllava.infer.explain import render as render_relevance
from ppllava.infer.explain import save_png

from . import synthetic
from .score import answer_in_modes, summarize

SPLIT = "demo"                           # its own stream of clips: never the train / val / test ones


def run_demo(pipeline, clips: int = 20, seed: int = 0, out: str | Path | None = None,
             modes=("prompt", "average")) -> dict:
    """Answer `synthetic.DEFAULT_QUESTIONS` questions about each of `clips` fresh clips; returns the rows,
    per-mode summaries, token counts and timings (and writes the relevance picture to `out`)."""
    config = pipeline.model.config
    rows, seconds, picture = [], [], None
    for i in range(clips):
        rng = synthetic.clip_rng(seed, SPLIT, i)
        scene = synthetic.make_scene(rng)
        start = time.perf_counter()
        visual = pipeline.from_frames(torch.from_numpy(synthetic.render(scene)), True, f"clip {i}")
        for qa in synthetic.questions(scene, rng):
            row = {"clip": i, **qa}
            for mode, a in answer_in_modes(pipeline, visual, qa["question"], qa["answer"], modes).items():
                row.update({mode: a["said"], f"{mode}_correct": a["correct"], f"{mode}_tokens": a["visual_tokens"]})
            rows.append(row)
            if out is not None and picture is None and qa["rare"]:
                picture = _picture(pipeline, visual, qa, out)
        seconds.append(time.perf_counter() - start)
    frames = synthetic.DEFAULT_FRAMES
    return {"seed": seed, "clips": clips, "rows": rows, "picture": picture, "trained_with": config.pooling_mode,
            "patches": frames * config.patch_grid ** 2,
            "tokens": {mode: rows[0][f"{mode}_tokens"] for mode in modes} if rows else {},
            "seconds_per_video": float(np.mean(seconds)) if seconds else None,
            "summary": {mode: summarize([{**r, "correct": r[f"{mode}_correct"]} for r in rows]) for mode in modes}}


def _picture(pipeline, visual, qa: dict, out) -> str:
    config = pipeline.model.config
    saved, config.pooling_mode = config.pooling_mode, "prompt"        # the map prompt-guided pooling uses
    try:
        relevance = pipeline.relevance(visual, qa["question"])
    finally:
        config.pooling_mode = saved
    title = f"\u201c{qa['question']}\u201d  truth: {qa['answer']}"
    save_png(render_relevance(visual.frames, relevance, visual.indices, title, crop=pipeline.preprocess.crop), out)
    return str(out)


def format_demo(report: dict, device: str) -> str:
    modes = list(report["summary"])
    head = f"{'clip':>4}  {'question':<40} {'truth':<8} " + " ".join(f"{m:<9}" for m in modes)
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        said = " ".join(f"{(r[m] or '-')[:7] + (' ok' if r[m + '_correct'] else ' x'):<9}" for m in modes)
        lines.append(f"{r['clip']:>4}  {r['question'][:40]:<40} {r['answer']:<8} {said}")
    lines.append("")
    lines.append(f"device {device}; seed {report['seed']} (--seed {report['seed']} shows these clips again); "
                 f"{report['seconds_per_video']:.3f} s per video ({len(modes)} pooling modes x "
                 f"{synthetic.DEFAULT_QUESTIONS} questions)")
    tokens = ", ".join(f"{m} {n}" for m, n in report["tokens"].items())
    lines.append(f"visual tokens: {report['patches']} patches before pooling -> {tokens} after")
    for mode, s in report["summary"].items():
        lines.append(f"{mode:>8} pooling: {_pct(s)} of {s['questions']} questions right (chance {s['chance']:.0%}); "
                     f"rare shape {_pct(s['rare'])}, other {_pct(s['common'])}; "
                     + ", ".join(f"{k} {_pct(v)}" for k, v in s["per_kind"].items()))
    lines.append(f"(one set of weights answers in every column: trained with {report['trained_with']} pooling; "
                 f"BENCHMARKS.md compares models trained with each)")
    if report["picture"]:
        lines.append(f"relevance map of a question about the brief shape: {report['picture']}")
    return "\n".join(lines)


def _pct(s: dict) -> str:
    return "-" if s["accuracy"] is None else f"{s['accuracy']:.0%}"

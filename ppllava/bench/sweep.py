"""`ppllava bench e2e --frames 32,64,128,256 --batch-size 1,4,8 --questions 3`: seconds per video, questions per
second and peak memory of the inference pipeline over frame counts and batch sizes.

For every (frames, batch size) pair, --videos videos of decoded frames (uint8 (T, H, W, 3) in host memory) and
--questions different questions about each (--text-tokens random words of the tiny tokenizers' corpus) are
answered as `ppllava eval --batch-size B` answers them: the questions in order, video by video, each chunk of B
consecutive questions through Pipeline.generate_batch (each row prefilled alone, the decoding steps batched), a video encoded
(preprocess + vision tower, Pipeline.from_frames) when its first question comes and kept while its questions
last. Every answer is exactly --new-tokens greedy tokens (min_new_tokens: the random weights never stop a row
early). A run is timed from the decoded frames to the last answer; each figure is the median of --repeats runs
after a warm-up run of every pair, the pairs interleaved; peak memory comes from one more run of each pair
(backends.memory.peak_meter, as the modes comparison).

Per pair:
  seconds_per_video          the run's time / videos
  questions_per_s            videos x questions / the run's time
  vision_s_per_video         preprocess + vision tower (the pipeline's own timer) / videos
  beyond_vision_s_per_video  the rest: prompt tower, relevance map, pooling, projector, LLM prefill and decoding
With several frame counts, each pair's beyond-vision cost over that of the first frame count at its batch size
(target: at most 1.2x; under a token budget the LLM reads the same number of visual tokens at any length). With
several batch sizes, each pair's questions per second over batch 1's at its frame count (target: at least 2x at
batch 8). With --questions > 1 a reference row per frame count answers one question at a time and encodes the
video again for each question: what inference did before questions shared a vision pass.

The model is a MODEL_SIZES entry or a configs/model architecture with random weights (bench/e2e.py), read
through the tiny checkpoint's tokenizers (ppllava.model.tiny: byte-level BPEs trained offline), its special
token ids set to theirs.
"""

from __future__ import annotations

import copy
import random
import statistics
import time

import torch

from backends.device import synchronize

from .e2e import describe_model, model_config, synthetic_frames
from .report import facts_line, mib, run_facts
from .timing import interleaved

TARGET = {"beyond_vision_over_first_frames_max": 1.2, "questions_per_s_over_batch_1_min": 2.0,
          "at_batch_size": 8}


def bench_pipeline(config, device: torch.device, dtype: torch.dtype, seed: int, frames: int):
    """A Pipeline of `config` with random weights and the tiny tokenizers (the config's token ids set to theirs)."""
    from ..infer.pipeline import Pipeline
    from ..model.factory import build_model
    from ..model.tiny import clip_tokenizer, llm_tokenizer, use_token_ids

    tokenizer = llm_tokenizer()
    prompt_tokenizer = clip_tokenizer(config.prompt_config.max_position_embeddings)
    use_token_ids(config, tokenizer, prompt_tokenizer)
    config.check()
    model = build_model(config, seed=seed, dtype=dtype).to(device)
    return Pipeline(model, tokenizer, prompt_tokenizer, device, frames)


def make_questions(videos: int, questions: int, words: int, seed: int) -> list[list[str]]:
    """`questions` different questions of `words` random corpus words for each of `videos` videos."""
    from ..model.tiny import CORPUS

    vocab = sorted({w for line in CORPUS for w in line.split()})
    rng = random.Random(seed)
    return [[" ".join(rng.choice(vocab) for _ in range(words)) + "?" for _ in range(questions)]
            for _ in range(videos)]


@torch.no_grad()
def answer_all(pipe, videos: list[torch.Tensor], questions: list[list[str]], batch: int, new_tokens: int,
               share: bool = True) -> dict:
    """Answer every question as `ppllava eval --batch-size batch` does; seconds of the run and of its vision passes.
    share=False: every question encodes its video again (batch must be 1)."""
    order = [(v, q) for v, qs in enumerate(questions) for q in qs]
    encoded, vision = {}, 0.0
    synchronize(pipe.device)
    start = time.perf_counter()
    for i in range(0, len(order), batch):
        chunk = order[i:i + batch]
        encoded = {v: e for v, e in encoded.items() if share and v in {c[0] for c in chunk}}
        for v, _ in chunk:
            if v not in encoded:
                encoded[v] = pipe.from_frames(videos[v], True, f"video {v}")
                vision += encoded[v].seconds["vision"]
        answers = pipe.ask_batch([(encoded[v], q) for v, q in chunk], new_tokens, min_new_tokens=new_tokens)
        if any(a.tokens != new_tokens for a in answers):
            raise RuntimeError(f"an answer has {[a.tokens for a in answers]} tokens, expected {new_tokens} each")
    synchronize(pipe.device)
    return {"total_s": time.perf_counter() - start, "vision_s": vision}


def bench_sweep(device: torch.device, dtype: torch.dtype, frames: tuple[int, ...], batch_sizes: tuple[int, ...],
                size: str, questions: int = 1, videos: int | None = None, new_tokens: int = 32, repeats: int = 3,
                resolution: tuple[int, int] = (640, 360), text_tokens: int = 16, seed: int = 0, budget: dict | None = None,
                config=None, progress=None) -> dict:
    """Time every (frames, batch size) pair; see the module docstring. `budget`: apply_budget's keyword
    arguments (max_visual_tokens / pooled_size); `config`: a PPLLaVAConfig instead of the `size` entry (tests)."""
    from ..infer.pipeline import apply_budget, check_frame_budget

    step = progress or (lambda label: None)
    label = size if config is None else "custom"
    config = copy.deepcopy(config if config is not None else model_config(size))
    apply_budget(config, **(budget or {}))
    for f in frames:
        check_frame_budget(config, f)
    videos = videos or max(batch_sizes)
    step(f"building model {label!r}")
    pipe = bench_pipeline(config, device, dtype, seed, max(frames))
    width, height = resolution
    clips = {f: [synthetic_frames(f, height, width, seed + v) for v in range(videos)] for f in frames}
    asked = make_questions(videos, questions, text_tokens, seed)
    pairs = [(f, b, True) for f in frames for b in batch_sizes] + ([(f, 1, False) for f in frames] if questions > 1 else [])

    def run(pair):
        f, b, share = pair
        return answer_all(pipe, clips[f], asked, b, new_tokens, share)

    def name(pair):
        return f"{pair[0]} frames, batch {pair[1]}" + ("" if pair[2] else ", vision per question")

    times, peaks, memory = interleaved({name(pair): lambda pair=pair: run(pair) for pair in pairs}, repeats, device,
                                       step)

    count = videos * questions
    rows = []
    for pair in pairs:
        f, b, share = pair
        runs = times[name(pair)]
        total = statistics.median(t["total_s"] for t in runs)
        vision = statistics.median(t["vision_s"] for t in runs)
        rows.append({"frames": f, "batch_size": b, "shared_vision": share,
                     "visual_tokens": config.visual_tokens(f, True), "seconds_per_video": total / videos,
                     "questions_per_s": count / total, "vision_s_per_video": vision / videos,
                     "beyond_vision_s_per_video": (total - vision) / videos,
                     "runs_s": [t["total_s"] for t in runs], "peak_memory_bytes": peaks[name(pair)]})
    _relate(rows)
    return {
        **run_facts(device, dtype),
        "model": describe_model(pipe.model, label) | {"pooling_mode": config.pooling_mode},
        "budget": {"video_max_tokens": config.video_max_tokens, "video_pooled_size": config.video_pooled_size},
        "videos": videos, "questions_per_video": questions, "text_words": text_tokens,
        "decoded_resolution": f"{width}x{height}", "new_tokens": new_tokens, "repeats": repeats, "seed": seed,
        "timing": "from decoded uint8 frames in host memory through Pipeline.from_frames (preprocess, vision tower) "
                  "and Pipeline.ask_batch (prompt tower, pooling, projector, LLM) to the last answer, as `ppllava "
                  "eval --batch-size` groups questions; median of repeats after a warm-up run per pair, interleaved",
        "memory": memory,
        "rows": rows,
        "target": _target(rows),
    }


def _relate(rows: list[dict]) -> None:
    """Each shared row's beyond-vision cost over the first frame count's (same batch size) and its questions per
    second over batch 1's (same frames; the smallest batch size where 1 was not run)."""
    shared = [r for r in rows if r["shared_vision"]]
    for r in rows:
        first = next(s for s in shared if s["batch_size"] == r["batch_size"]) if r["shared_vision"] else None
        base = min((s for s in shared if s["frames"] == r["frames"]), key=lambda s: s["batch_size"])
        r["beyond_vision_over_first_frames"] = (r["beyond_vision_s_per_video"] / first["beyond_vision_s_per_video"]
                                                if first else None)
        r["questions_per_s_over_batch_1"] = r["questions_per_s"] / base["questions_per_s"] if base["batch_size"] == 1 else None


def _target(rows: list[dict]) -> dict:
    shared = [r for r in rows if r["shared_vision"]]
    frames = [r["beyond_vision_over_first_frames"] for r in shared]
    at = [r["questions_per_s_over_batch_1"] for r in shared if r["batch_size"] == TARGET["at_batch_size"]
          and r["questions_per_s_over_batch_1"] is not None]
    out = dict(TARGET)
    if len({r["frames"] for r in shared}) > 1:
        out["beyond_vision_over_first_frames"] = max(frames)
        out["frames_met"] = max(frames) <= TARGET["beyond_vision_over_first_frames_max"]
    if at:
        out["questions_per_s_over_batch_1"] = min(at)
        out["batch_met"] = min(at) >= TARGET["questions_per_s_over_batch_1_min"]
    return out


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_sweep(report: dict) -> str:
    m, b = report["model"], report["budget"]
    budget = (f"at most {b['video_max_tokens']} visual tokens per video" if b["video_max_tokens"] else
              f"videos pooled to {b['video_pooled_size']}" if b["video_pooled_size"] else "the model's fixed kernels")
    lines = [
        facts_line(report),
        f"model {m['size']!r}: {m['description']}; pooling {m['pooling_mode']}, {budget}",
        f"{report['videos']} videos decoded at {report['decoded_resolution']}, {report['questions_per_video']} "
        f"question(s) each of {report['text_words']} words, {report['new_tokens']} new tokens per answer (greedy); "
        f"median of {report['repeats']} after a warm-up",
        f"{'frames':>6} {'batch':>5} {'visual tok':>10} {'s/video':>8} {'questions/s':>11} {'vision s':>9} "
        f"{'beyond s':>9} {'peak memory':>12} {'beyond/first':>12} {'q/s vs b1':>9}",
    ]
    for r in report["rows"]:
        batch = f"{r['batch_size']}" + ("" if r["shared_vision"] else "*")
        lines.append(f"{r['frames']:>6} {batch:>5} {r['visual_tokens']:>10} {r['seconds_per_video']:>8.3f} "
                     f"{r['questions_per_s']:>11.3f} {r['vision_s_per_video']:>9.3f} "
                     f"{r['beyond_vision_s_per_video']:>9.3f} {mib(r['peak_memory_bytes']):>12} "
                     f"{_ratio(r['beyond_vision_over_first_frames']):>12} {_ratio(r['questions_per_s_over_batch_1']):>9}")
    if any(not r["shared_vision"] for r in report["rows"]):
        lines.append("* one question at a time, the video encoded again for each (no shared vision pass)")
    t = report["target"]
    if "frames_met" in t:
        lines.append(f"beyond the vision tower, the longest video costs {t['beyond_vision_over_first_frames']:.2f}x "
                     f"the first frame count's (target <= {t['beyond_vision_over_first_frames_max']}x): "
                     f"{'met' if t['frames_met'] else 'NOT met'}")
    if "batch_met" in t:
        lines.append(f"batch {t['at_batch_size']}: {t['questions_per_s_over_batch_1']:.2f}x the questions per second "
                     f"of batch 1 (target >= {t['questions_per_s_over_batch_1_min']}x): "
                     f"{'met' if t['batch_met'] else 'NOT met'}")
    lines += [f"peak memory: {report['memory']}", f"timing: {report['timing']}"]
    return "\n".join(lines)

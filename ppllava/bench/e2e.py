"""`ppllava bench e2e`: seconds per video, visual tokens and peak memory of the three pooling modes.

One model (random weights from a fixed seed) answers about the same decoded video three times, with
`config.pooling_mode` switched between
    none      every patch token reaches the LLM (32 frames x 24 x 24 = 18432 tokens)
    average   avg_pool3d with the video kernel (2, 3, 3): 16 x 8 x 8 = 1024 tokens
    prompt    prompt-guided pooling (PPLLaVA) with the same kernel: 1024 tokens
Each run is timed from the decoded frames (uint8 (T, H, W, 3) already in memory) through preprocessing
(resize, centre crop, normalise), the vision tower, the pooling (prompt tower + relevance map for
"prompt") and the projector to the LLM's first generated token, and on to N generated tokens
(greedy, min_new_tokens = max_new_tokens so EOS never stops a run early). Every mode gets a warm-up
run first; the timed runs go round the modes in turn (so drift of the machine hits every mode alike)
and each figure is the median of --repeats runs.

Peak memory is measured in one more run per mode, after the timed ones (so one-time costs of a process's
first run, thread pools and kernel caches, are not in it):
  accelerator  torch.accelerator.max_memory_allocated() after reset_peak_memory_stats(), minus what was
               allocated before the run (weights, the frames): the peak of the run's own tensors.
  cpu          the process's peak resident set (VmHWM of /proc/self/status) during the run, minus its
               resident set before it; the peak is reset before the run by writing 5 to
               /proc/self/clear_refs, after gc and malloc_trim(0) hand freed memory back, so the figure is
               the run's own growth (its tensors plus allocator overhead), not what earlier runs left.
  Where neither is available (a CPU without /proc, clear_refs or glibc) it is reported as null.

The model sizes (MODEL_SIZES) keep the paper's token geometry, 24 x 24 patches per frame, at widths a
machine can run: the default "narrow" is sized for a small CPU so that the LLM, as at full scale, takes
most of the time of a full-token run; any configs/model architecture (e.g. llava-next-7b, the paper's
CLIP-L/336 + 7B LLM) can be named instead, with random weights.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from backends.device import synchronize

from .report import facts_line, mib, run_facts
from .timing import interleaved

# the model and data modules (transformers) are imported where used: the CLI reads MODEL_SIZES at start-up

MODES = ("none", "average", "prompt")
PAPER_SECONDS = {"none": 15.0, "prompt": 4.6}          # seconds per video, the paper (full tokens vs PPLLaVA)
TARGET = {"prompt_speedup_vs_none_min": 3.0, "prompt_over_average_max": 1.15}


def _architecture(name: str) -> dict:
    """The PPLLaVAConfig fields of configs/model/<name>.yaml."""
    import yaml

    from ..model.factory import CONFIG_DIR

    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


def _tiny_with_llm(**llm) -> dict:
    """tiny.yaml's vision and prompt towers (48 px frames, 2 px patches: 24 x 24 patches) and a Qwen2 LLM."""
    data = _architecture("tiny")
    data["text_config"] = {**data["text_config"], **llm}
    return data


def _wide() -> dict:
    """CLIP ViT-L/14-336 vision tower and CLIP text prompt tower (llava-next-7b's) with a Qwen2-0.5B-sized LLM."""
    data = _architecture("llava-next-7b")
    data["text_config"] = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                               num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                               max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1.0e-6,
                               tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
                               pad_token_id=151643)
    data["image_token_id"], data["video_token_id"] = 151646, 151647
    return data


# name -> (what it is, a function giving PPLLaVAConfig fields)
MODEL_SIZES = {
    "tiny": ("configs/model/tiny.yaml as it is: CLIP ViT (hidden 32, 2 layers, 48 px frames, patch 2 -> 24x24) + "
             "CLIP text prompt tower (hidden 32, 2 layers) + Qwen2 LLM (hidden 64, 2 layers); for tests",
             lambda: _tiny_with_llm()),
    "narrow": ("tiny.yaml's CLIP towers (48 px frames, patch 2 -> 24x24 patches, hidden 32) + a Qwen2 LLM of "
               "hidden 384, 6 layers, 6 heads (2 KV heads), MLP 1536, vocab 32000; sized for a small CPU, the "
               "LLM taking most of a full-token run as at full scale",
               lambda: _tiny_with_llm(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                      num_attention_heads=6, num_key_value_heads=2, vocab_size=32000,
                                      max_position_embeddings=32768)),
    "wide": ("llava-next-7b's CLIP ViT-L/14-336 (24x24 patches) and CLIP text prompt tower + a Qwen2-0.5B-sized "
             "LLM (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936); for an accelerator",
             _wide),
}
DEFAULT_MODEL_SIZE = "narrow"


def model_choices() -> list[str]:
    """MODEL_SIZES, then the configs/model architectures (each a --model-size choice)."""
    from ..model.factory import available_architectures

    return [*MODEL_SIZES, *(a for a in available_architectures() if a not in MODEL_SIZES)]


def model_config(size: str):
    """PPLLaVAConfig of a MODEL_SIZES entry or a configs/model architecture name (or a .yaml path)."""
    from ..model.factory import config_from_dict, load_config

    if size in MODEL_SIZES:
        return config_from_dict(MODEL_SIZES[size][1](), f"model size {size!r}")
    return load_config(size)


def describe_model(model, size: str) -> dict:
    config = model.config
    v, p, t = config.vision_config, config.prompt_config, config.text_config
    params = {group: sum(param.numel() for _, param in named) for group, named in model.parameter_groups().items()}
    return {
        "size": size,
        "description": MODEL_SIZES[size][0] if size in MODEL_SIZES else
                       "a config given by the caller" if size == "custom" else
                       f"configs/model architecture {size!r}, random weights",
        "vision": {"model_type": v.model_type, "hidden_size": v.hidden_size, "layers": v.num_hidden_layers,
                   "image_size": v.image_size, "patch_size": v.patch_size, "patch_grid": config.patch_grid},
        "prompt_tower": {"model_type": p.model_type, "hidden_size": p.hidden_size, "layers": p.num_hidden_layers,
                         "positions": p.max_position_embeddings},
        "llm": {"model_type": t.model_type, "hidden_size": t.hidden_size, "layers": t.num_hidden_layers,
                "attention_heads": t.num_attention_heads,
                "kv_heads": getattr(t, "num_key_value_heads", t.num_attention_heads),
                "intermediate_size": t.intermediate_size, "vocab_size": t.vocab_size},
        "parameters": params,
        "video_kernel": list(config.video_kernel),
    }


# -- one run ------------------------------------------------------------------------------------------
class _FirstToken:
    """transformers' streamer protocol: the time the first generated token arrives (device synchronised)."""

    def __init__(self, device: torch.device):
        self.device, self.first, self.tokens = device, None, 0

    def put(self, value: torch.Tensor) -> None:
        if not value.numel():                  # generate() first sends the prompt's ids: none with embeddings
            return
        if self.first is None:
            synchronize(self.device)
            self.first = time.perf_counter()
        self.tokens += value.numel()

    def end(self) -> None:
        pass


def synthetic_frames(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Decoded frames: uint8 (T, H, W, 3), smooth random images (random noise would be the same cost)."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(frames, 3, max(2, height // 16), max(2, width // 16), generator=gen)
    big = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return (big * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _inputs(config, frames: int, text_tokens: int, prompt_tokens: int, device: torch.device, seed: int) -> dict:
    """input_ids: the mode's placeholder run, then text_tokens text tokens (the same for every mode)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = min(config.image_token_id, config.video_token_id or config.image_token_id)
    text = torch.randint(2, vocab, (text_tokens,), generator=gen)
    prompt = torch.randint(2, config.prompt_config.vocab_size, (1, prompt_tokens), generator=gen)
    prompt[:, -1] = config.prompt_config.eos_token_id
    ids = torch.cat([torch.tensor(config.placeholders(frames, True), dtype=torch.long), text])[None]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "visual_frames": torch.tensor([frames]), "visual_is_video": torch.tensor([True]),
            "visual_sample": torch.tensor([0]), "prompt_input_ids": prompt.to(device),
            "prompt_attention_mask": torch.ones_like(prompt).to(device)}


@torch.no_grad()
def run_once(model, preprocess, video: torch.Tensor, inputs: dict, device: torch.device, new_tokens: int) -> tuple[float, float]:
    """(seconds to the first generated token, seconds to new_tokens tokens) from the decoded frames."""
    text = model.config.text_config
    synchronize(device)
    start = time.perf_counter()
    pixel_values = preprocess(video.to(device)).to(model.dtype)
    streamer = _FirstToken(device)
    out = model.generate(**inputs, pixel_values=pixel_values, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, streamer=streamer, pad_token_id=text.pad_token_id,
                         eos_token_id=text.eos_token_id)
    synchronize(device)
    end = time.perf_counter()
    generated = out.shape[1] - inputs["input_ids"].shape[1]
    if generated != new_tokens or streamer.first is None:
        raise RuntimeError(f"generated {generated} tokens, expected {new_tokens}")
    return streamer.first - start, end - start


@torch.no_grad()
def _vision_once(model, preprocess, video, device) -> float:
    """Seconds of preprocessing + vision tower alone (the part every mode shares)."""
    synchronize(device)
    start = time.perf_counter()
    model.vision_patches(preprocess(video.to(device)).to(model.dtype))
    synchronize(device)
    return time.perf_counter() - start


def bench_e2e(device: torch.device, dtype: torch.dtype, size: str = DEFAULT_MODEL_SIZE, frames: int = 32,
              new_tokens: int = 32, repeats: int = 3, resolution: tuple[int, int] = (640, 360), text_tokens: int = 64,
              prompt_tokens: int = 24, seed: int = 0, config=None, progress=None) -> dict:
    """Time the three pooling modes of one model on one video; see the module docstring.

    `config`: a PPLLaVAConfig to use instead of the `size` entry (tests); `resolution`: (width, height)
    of the decoded frames."""
    from ..data.preprocess import Preprocessor
    from ..model.factory import build_model

    step = progress or (lambda label: None)
    label = size if config is None else "custom"
    step(f"building model {label!r}")
    config = copy.deepcopy(config if config is not None else model_config(size))
    model = build_model(config, seed=seed, dtype=dtype).to(device).eval()
    model.language_model.generation_config.pad_token_id = config.text_config.pad_token_id
    preprocess = Preprocessor.for_config(config)
    width, height = resolution
    video = synthetic_frames(frames, height, width, seed)       # decoded frames, in host memory
    inputs, tokens = {}, {}
    for mode in MODES:
        model.config.pooling_mode = mode
        tokens[mode] = model.config.visual_tokens(frames, True)
        inputs[mode] = _inputs(model.config, frames, text_tokens, prompt_tokens, device, seed)

    def run(mode):
        model.config.pooling_mode = mode
        return run_once(model, preprocess, video, inputs[mode], device, new_tokens)

    times, peaks, memory = interleaved({mode: lambda mode=mode: run(mode) for mode in MODES}, repeats, device, step)
    step("vision tower alone")
    _vision_once(model, preprocess, video, device)
    vision = statistics.median(_vision_once(model, preprocess, video, device) for _ in range(repeats))

    rows = {}
    for mode in MODES:
        first = [t[0] for t in times[mode]]
        total = [t[1] for t in times[mode]]
        rows[mode] = {"visual_tokens": tokens[mode], "llm_input_tokens": int(inputs[mode]["input_ids"].shape[1]),
                      "first_token_s": statistics.median(first), f"tokens_{new_tokens}_s": statistics.median(total),
                      "total_s": statistics.median(total), "first_token_runs_s": first, "total_runs_s": total,
                      "peak_memory_bytes": peaks[mode]}
    for mode, row in rows.items():
        row["speedup_vs_none"] = rows["none"]["total_s"] / row["total_s"]
        row["speedup_vs_none_first_token"] = rows["none"]["first_token_s"] / row["first_token_s"]
        row["ratio_vs_average"] = row["total_s"] / rows["average"]["total_s"]
        row["ratio_vs_average_first_token"] = row["first_token_s"] / rows["average"]["first_token_s"]
    prompt = rows["prompt"]
    return {
        **run_facts(device, dtype),
        "model": describe_model(model, label),
        "video": {"frames": frames, "decoded_resolution": f"{width}x{height}",
                  "patches_per_frame": f"{config.patch_grid}x{config.patch_grid}",
                  "text_tokens": text_tokens, "prompt_tower_tokens": prompt_tokens},
        "new_tokens": new_tokens, "repeats": repeats, "seed": seed,
        "timing": "from decoded uint8 frames in host memory (preprocess, vision tower, pooling, projector, LLM "
                  "prefill) to the first generated token, and to new_tokens greedy tokens; median of repeats "
                  "after one warm-up run per mode, modes interleaved",
        "memory": memory,
        "vision_s": vision,
        "modes": rows,
        "target": {**TARGET, "prompt_speedup_vs_none": prompt["speedup_vs_none"],
                   "prompt_over_average": prompt["ratio_vs_average"],
                   "met": prompt["speedup_vs_none"] >= TARGET["prompt_speedup_vs_none_min"]
                          and prompt["ratio_vs_average"] <= TARGET["prompt_over_average_max"]},
        "paper_seconds_per_video": PAPER_SECONDS,
    }


def format_report(report: dict) -> str:
    m, v = report["model"], report["video"]
    n = report["new_tokens"]
    lines = [
        facts_line(report),
        f"model {m['size']!r}: {m['description']}",
        "  parameters: " + ", ".join(f"{k} {p / 1e6:.2f}M" for k, p in m["parameters"].items()),
        f"video: {v['frames']} frames decoded at {v['decoded_resolution']} -> {m['vision']['image_size']} px, "
        f"{v['patches_per_frame']} patches each; {v['text_tokens']} text tokens; {n} new tokens (greedy); "
        f"median of {report['repeats']} after a warm-up",
        f"{'mode':<8} {'visual tokens':>13} {'first token s':>14} {f'{n} tokens s':>12} {'peak memory':>12} "
        f"{'vs full':>8} {'vs average':>10}",
    ]
    for mode, r in report["modes"].items():
        lines.append(f"{mode:<8} {r['visual_tokens']:>13} {r['first_token_s']:>14.3f} {r['total_s']:>12.3f} "
                     f"{mib(r['peak_memory_bytes']):>12} {r['speedup_vs_none']:>7.2f}x {r['ratio_vs_average']:>9.2f}x")
    t = report["target"]
    lines += [
        f"preprocess + vision tower alone (every mode): {report['vision_s']:.3f} s",
        f"prompt-guided: {t['prompt_speedup_vs_none']:.2f}x faster than full tokens (target >= "
        f"{t['prompt_speedup_vs_none_min']}x), {t['prompt_over_average']:.3f}x the time of average pooling "
        f"(target <= {t['prompt_over_average_max']}x): {'met' if t['met'] else 'NOT met'}; the paper: "
        f"{report['paper_seconds_per_video']['none']} s full vs {report['paper_seconds_per_video']['prompt']} s",
        f"peak memory: {report['memory']}",
        f"timing: {report['timing']}",
    ]
    return "\n".join(lines)

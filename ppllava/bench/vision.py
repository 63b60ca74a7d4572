"""`ppllava bench vision`: the vision tower stopped at its feature layer against the full forward it replaced
(issue 23).

For each frame count F, random pixel_values (F, 3, S, S) go through one vision tower (random weights from a
fixed seed) two ways:
    early_stop     TowerFamily.feature_layer: the embeddings and the encoder layers up to
                   config.vision_feature_layer, no other state kept (what vision_patches runs now)
    full_forward   tower(pixel_values, output_hidden_states=True), then TowerFamily.vision_features: every
                   layer runs and all layers + 1 hidden states are kept until one is picked (what it ran before)
The two features must be equal (torch.equal) or nothing is reported. All F frames go through the tower in
one call, as the model encodes a video's frames (no chunking).

Time: under torch.no_grad, device synchronised, the median of --repeats runs of each way after one warm-up run
of each (the one whose features are compared); the timed runs alternate the ways, so drift of the machine hits
both alike. Peak memory: one more run of each way after the timed ones, measured with backends.memory.peak_meter
(as `bench e2e`: the peak of the run's own allocations on an accelerator, the growth of the resident set on the
CPU). Beside it, the analytical figure: the bytes of the hidden states each way keeps, (layers + 1) states of
F x tokens x hidden for the full forward, one for the early stop.

The default tower, "clip-l-depth", is a CPU stand-in for llava-next-7b's CLIP ViT-L/14-336: its 24 layers,
24x24 patch grid (+ CLS: 577 tokens a frame) and feature layer -2, at a narrow width, so the fraction of layers
skipped and the ratio of hidden-state memory are the real tower's while 256 frames run on a small CPU. Any
configs/model architecture's vision tower can be named instead (the real widths: meant for an accelerator).
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from backends.device import synchronize
from backends.memory import peak_meter

from .report import facts_line, mib, run_facts
from .timing import interleaved, memory_method

WAYS = ("early_stop", "full_forward")


def _clip_l_depth():
    """llava-next-7b's config with its CLIP ViT-L/14-336 tower narrowed: hidden 64, 4 heads, MLP 256, and
    48 px frames of 2 px patches (the same 24x24 grid as 336/14, a patch embedding as small as the width)."""
    from ..model.factory import load_config

    config = load_config("llava-next-7b")
    v = config.vision_config
    v.hidden_size, v.num_attention_heads, v.intermediate_size, v.image_size, v.patch_size = 64, 4, 256, 48, 2
    return config


# name -> (what it is, a function giving a PPLLaVAConfig whose vision_config and vision_feature_layer count)
STAND_INS = {
    "clip-l-depth": ("llava-next-7b's CLIP ViT-L/14-336 at its depth (24 layers, feature layer -2) and patch grid "
                     "(24x24 + CLS) but narrow (hidden 64, 4 heads, MLP 256; 48 px frames, patch 2); a CPU stand-in",
                     _clip_l_depth),
}
DEFAULT_TOWER = "clip-l-depth"


def tower_choices() -> list[str]:
    """STAND_INS, then the configs/model architectures (each a --tower choice: its vision tower)."""
    from ..model.factory import available_architectures

    return [*STAND_INS, *available_architectures()]


def tower_config(name: str):
    """The PPLLaVAConfig of a --tower choice."""
    from ..model.factory import load_config

    known = tower_choices()
    if name not in known:
        raise ValueError(f"--tower: unknown {name!r} (known: {', '.join(known)})")
    return STAND_INS[name][1]() if name in STAND_INS else load_config(name)


def build_tower(config, seed: int, dtype: torch.dtype):
    """The vision tower of a PPLLaVAConfig, random weights from `seed` (as the model builds it)."""
    from transformers import AutoModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = AutoModel.from_config(config.vision_config)
    return tower.to(dtype).eval()


def describe_tower(config, tower, name: str) -> dict:
    from ..model.config import side

    v, layers = config.vision_config, config.vision_config.num_hidden_layers
    layer = config.vision_feature_layer
    run = layer % (layers + 1)                 # feature_layer runs the encoder layers before hidden_states[layer]
    return {"name": name,
            "description": STAND_INS[name][0] if name in STAND_INS else
                           "a config given by the caller" if name == "custom" else
                           f"the vision tower of configs/model architecture {name!r}, random weights",
            "model_type": v.model_type, "layers": layers, "hidden_size": v.hidden_size,
            "attention_heads": v.num_attention_heads, "intermediate_size": v.intermediate_size,
            "image_size": side(v.image_size), "patch_size": side(v.patch_size),
            "patch_grid": config.native_grid, "feature_layer": layer, "layers_run": run,
            "layers_skipped": layers - run, "parameters": sum(p.numel() for p in tower.parameters())}


def _seconds(fn, pixel_values: torch.Tensor, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn(pixel_values)
    synchronize(device)
    return time.perf_counter() - start


class FeaturesDiffer(RuntimeError):
    """The early stop's features are not the full forward's: there is nothing to compare."""


@torch.no_grad()
def bench_frames(tower, family, layer: int, size: int, frames: int, repeats: int, device: torch.device, seed: int,
                 step) -> dict:
    """One frame count's row: both ways on the same random pixel_values (F, 3, size, size); see the module
    docstring."""
    gen = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(frames, 3, size, size, generator=gen).to(device, tower.dtype)
    ways = {"early_stop": lambda px: family.feature_layer(tower, px, layer),
            "full_forward": lambda px: family.vision_features(tower(pixel_values=px, output_hidden_states=True), layer)}

    step(f"{frames} frames: warm-up and features check")
    early = ways["early_stop"](pixel_values)
    outputs = tower(pixel_values=pixel_values, output_hidden_states=True)
    full, states = family.vision_features(outputs, layer), len(outputs.hidden_states)
    del outputs
    if early.shape != full.shape or not torch.equal(early, full):
        gap = (early.float() - full.float()).abs().max().item() if early.shape == full.shape else "shapes differ"
        raise FeaturesDiffer(f"{frames} frames: the early stop's features {tuple(early.shape)} are not the full "
                             f"forward's {tuple(full.shape)} (max abs difference {gap}); refusing to report")
    _, tokens, hidden = early.shape
    state_bytes = frames * tokens * hidden * early.element_size()
    del early, full

    # the features check above was each way's warm-up
    runs, peaks, _ = interleaved({way: lambda way=way: _seconds(ways[way], pixel_values, device) for way in WAYS},
                                 repeats, device, lambda label: step(f"{frames} frames: {label}"), warmup=False)

    row = {"frames": frames, "tokens_per_frame": tokens, "full_forward_states": states}
    for way in WAYS:
        row[way] = {"seconds": statistics.median(runs[way]), "runs_s": runs[way], "peak_memory_bytes": peaks[way]}
    row["time_saved_fraction"] = 1 - row["early_stop"]["seconds"] / row["full_forward"]["seconds"]
    early_peak, full_peak = peaks["early_stop"], peaks["full_forward"]
    measured = early_peak is not None and full_peak is not None
    row["memory_saved_bytes"] = full_peak - early_peak if measured else None
    row["memory_ratio"] = full_peak / early_peak if measured and early_peak > 0 else None
    layers = tower.config.num_hidden_layers
    row["hidden_state_bytes"] = {"state": state_bytes, "full_forward": (layers + 1) * state_bytes,
                                 "early_stop": state_bytes, "saved": layers * state_bytes, "ratio": layers + 1}
    return row


def bench_vision(device: torch.device, dtype: torch.dtype, tower: str = DEFAULT_TOWER, frames=(32, 256),
                 repeats: int = 3, seed: int = 0, config=None, progress=None) -> dict:
    """Both ways of running the vision tower at each frame count; see the module docstring.

    `config`: a PPLLaVAConfig to take the tower from instead of the `tower` choice (tests)."""
    from ..model.config import side
    from ..model.towers import family_of_vision

    step = progress or (lambda label: None)
    name = tower if config is None else "custom"
    step(f"building tower {name!r}")
    config = copy.deepcopy(config if config is not None else tower_config(tower))
    family = family_of_vision(config.vision_config.model_type)
    model = build_tower(config, seed, dtype).to(device)
    size = side(config.vision_config.image_size)
    rows = [bench_frames(model, family, config.vision_feature_layer, size, f, repeats, device, seed, step)
            for f in frames]
    return {
        **run_facts(device, dtype),
        "tower": describe_tower(config, model, name),
        "repeats": repeats, "seed": seed,
        "timing": "pixel_values (F, 3, S, S) already on the device; all F frames in one call, as the model encodes "
                  "a video; torch.no_grad, device synchronised; median of repeats after one warm-up run of each "
                  "way, the ways alternating",
        "memory": memory_method(peak_meter(device)),
        "hidden_state_bytes": "analytical: the full forward keeps layers + 1 hidden states of F x tokens x hidden "
                              "(x the dtype's bytes) until the feature is picked, the early stop one",
        "frames": rows,
    }


def format_report(report: dict) -> str:
    t = report["tower"]
    lines = [
        facts_line(report),
        f"tower {t['name']!r}: {t['description']}",
        f"  {t['model_type']}, {t['layers']} layers, hidden {t['hidden_size']}, {t['patch_grid']}x{t['patch_grid']} "
        f"patches of {t['image_size']} px frames, {t['parameters'] / 1e6:.2f}M parameters; feature layer "
        f"{t['feature_layer']}: the early stop runs {t['layers_run']} of the {t['layers']} layers, skips "
        f"{t['layers_skipped']}",
        f"all frames in one call; median of {report['repeats']} after a warm-up; features equal (torch.equal)",
        f"{'frames':>6} {'early s':>9} {'full s':>9} {'time saved':>10} {'early peak':>11} {'full peak':>11} "
        f"{'saved':>10} {'ratio':>6} {'states early/full':>19}",
    ]
    for r in report["frames"]:
        e, f, h = r["early_stop"], r["full_forward"], r["hidden_state_bytes"]
        ratio = "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}x"
        lines.append(f"{r['frames']:>6} {e['seconds']:>9.3f} {f['seconds']:>9.3f} {r['time_saved_fraction']:>9.1%} "
                     f"{mib(e['peak_memory_bytes']):>11} {mib(f['peak_memory_bytes']):>11} "
                     f"{mib(r['memory_saved_bytes']):>10} {ratio:>6} "
                     f"{mib(h['early_stop']) + ' / ' + mib(h['full_forward']):>19}")
    lines += [f"peak memory: {report['memory']}", f"states: {report['hidden_state_bytes']}",
              f"timing: {report['timing']}"]
    return "\n".join(lines)

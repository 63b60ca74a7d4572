"""`ppllava bench ops|planted|data|e2e|vision|flops`: op speed beside plain-pooling references, what the ops keep of a
planted answer, the video input path, seconds per video of the whole model with full tokens, average pooling and
prompt-guided pooling (or over frame counts and batch sizes), and FLOPs per video."""

from __future__ import annotations

import json
import os
import sys

from ppllava.bench.ops import bench_ops, format_report

from . import options


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (ops, planted, data, e2e, vision, flops)", description="Benchmarks. Figures in BENCHMARKS.md come from these.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    ops = kinds.add_parser(
        "ops", help="forward and forward+backward time of both ops at the paper's shape",
        description="Time relevance_map and prompt_guided_pool (each implementation available on the device) at "
                    "the paper's shape, 32 frames of 24x24 patches (B=1 unless --batch), beside the original's unfold "
                    "formulation, avg_pool3d and one read of x (x.sum()). Median of --repeats runs after a warm-up. "
                    "Forward rows also give GB/s: the bytes the op must move (x read once, output written) per "
                    "second; the ratios give that as a fraction of the device's peak where it reports one.")
    options.add_device(ops)
    options.add_dtype(ops)
    options.add_geometry(ops)
    ops.add_argument("--relevance-dim", type=int, default=1024, help="embedding width C for relevance_map (default 1024)")
    ops.add_argument("--pool-dims", default="1024,4096", help="feature widths D for prompt_guided_pool (default 1024,4096)")
    ops.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    ops.add_argument("--batch", type=int, default=1, help="batch size B (default 1)")
    ops.add_argument("--json", action="store_true", help="print one JSON object with the timings and ratios")
    ops.set_defaults(run=run_ops)

    planted = kinds.add_parser(
        "planted", help="both ops on paper-sized features with a planted answer: where the relevance goes, what pooling keeps",
        description="Run relevance_map and prompt_guided_pool on paper-sized features (32 frames of 24x24 patches, "
                    "768-d CLIP embeddings, 1024-d features) in which one token per pooling window of one frame leans "
                    "towards the prompt and carries a planted feature; print the relevance mass on those tokens and "
                    "how much of their feature prompt-guided and average pooling keep, with the visual tokens before "
                    "and after pooling and the time.")
    options.add_device(planted)
    options.add_dtype(planted)
    options.add_geometry(planted)
    planted.set_defaults(run=run_planted)

    data = kinds.add_parser(
        "data", help="video frames decoded and preprocessed per second, per reader and worker count",
        description="Time the training input path for video: open a clip, sample --frames frames (segment centres), "
                    "decode and preprocess them (short side to --size, centre crop, normalise), through a DataLoader "
                    "with each --workers count, for every installed reader and for folders of extracted JPEG frames. "
                    "Clips are generated (H.264, --resolution) unless --videos names a folder of real ones.")
    data.add_argument("--readers", default=None,
                      help="comma-separated readers to time (default: every installed one, then 'frames')")
    data.add_argument("--workers", default="0,1,2", help="DataLoader worker counts (default 0,1,2)")
    data.add_argument("--frames", type=int, default=32, help="frames sampled per clip (default 32)")
    data.add_argument("--size", type=int, default=336, help="preprocessed frame size (default 336, CLIP-L/336)")
    data.add_argument("--clips", type=int, default=8, help="generated clips (default 8)")
    data.add_argument("--clip-frames", type=int, default=96, help="frames in each generated clip (default 96)")
    data.add_argument("--resolution", default="320x240", help="generated clips' WIDTHxHEIGHT (default 320x240)")
    data.add_argument("--videos", default=None, help="time the video files in this folder instead of generated clips")
    data.add_argument("--passes", type=int, default=2, help="timed passes over the clips after a warm-up pass (default 2)")
    data.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    data.set_defaults(run=run_data)

    flops = kinds.add_parser(
        "flops", help="FLOPs of one video through a full-size architecture, projector before or after the pooling",
        description="Count (torch.utils.flop_counter, on the meta device: no weights, no memory, the same on every "
                    "machine) the FLOPs of one video through an architecture of configs/model/: the vision tower, "
                    "the path from its features to the visual tokens (relevance map, pooling and the MLP projector, "
                    "run before or after the pooling), and the LLM's prefill of those tokens and --text-tokens more.")
    flops.add_argument("--architecture", default="llava-next-7b", help="configs/model/ name (default llava-next-7b)")
    flops.add_argument("--frames", type=int, default=32, help="frames of the video (default 32)")
    flops.add_argument("--text-tokens", type=int, default=80, help="prompt tokens beside the visual ones (default 80)")
    flops.add_argument("--json", action="store_true", help="print the rows as JSON")
    flops.set_defaults(run=run_flops)

    from ppllava.bench.e2e import DEFAULT_MODEL_SIZE, MODEL_SIZES

    e2e = kinds.add_parser(
        "e2e", help="seconds per video, questions per second and peak memory: pooling modes, frame counts, batch sizes",
        description="One model (random weights, fixed seed), timed from the decoded uint8 frames in memory "
                    "(preprocess, vision tower, pooling, projector, LLM) to --new-tokens greedy tokens per answer; "
                    "median of --repeats runs after a warm-up. With one --frames value and nothing below it, the "
                    "three pooling modes of one video: pooling_mode 'none' (every patch token to the LLM), "
                    "'average' (avg_pool3d) and 'prompt' (PPLLaVA), to the first token and to the last. With "
                    "several --frames, several --batch-size values, --questions > 1, --videos or a budget "
                    "(--max-visual-tokens / --pooled-size): a sweep through the inference pipeline over every "
                    "(frames, batch size) pair, --questions questions per video answered as `ppllava eval "
                    "--batch-size` answers them, reporting seconds per video, questions per second, the vision "
                    "tower's share and the cost beyond it. Peak memory comes from one more run of each: on an "
                    "accelerator torch.accelerator's peak allocated bytes above those before the run, on the CPU "
                    "the peak resident-set growth of the process (the output states which). Default --model-size "
                    "'narrow' keeps the paper's 24x24 patches per frame with an LLM small enough for a CPU.")
    options.add_device(e2e)
    options.add_dtype(e2e)
    e2e.add_argument("--model-size", default=DEFAULT_MODEL_SIZE,
                     help=f"model to time, with random weights: {', '.join(MODEL_SIZES)} (default {DEFAULT_MODEL_SIZE}, "
                          f"sized for a CPU; 'wide' is meant for an accelerator; the output describes the model), a "
                          f"configs/model architecture (e.g. llava-next-7b, the paper's scale) or a .yaml path")
    e2e.add_argument("--frames", default="32", help="frames of each video, or a comma-separated list to sweep "
                                                     "(e.g. 32,64,128,256; default 32)")
    e2e.add_argument("--batch-size", default="1", help="questions through the LLM together, or a comma-separated "
                                                        "list to sweep (e.g. 1,4,8; default 1)")
    e2e.add_argument("--questions", type=int, default=1, help="questions per video in a sweep (default 1)")
    e2e.add_argument("--videos", type=int, default=None,
                     help="videos per sweep run (default: the largest --batch-size)")
    options.add_budget(e2e)
    e2e.add_argument("--new-tokens", type=int, default=32, help="tokens generated per answer, greedy (default 32)")
    e2e.add_argument("--repeats", type=int, default=3, help="timed runs per mode or pair (default 3)")
    e2e.add_argument("--resolution", default="640x360", help="decoded frames' WIDTHxHEIGHT (default 640x360)")
    e2e.add_argument("--text-tokens", type=int, default=None,
                     help="text after the visual tokens: random tokens in the modes comparison (default 64), words "
                          "per question in a sweep (default 16)")
    e2e.add_argument("--seed", type=int, default=0, help="seed of the weights, frames and tokens (default 0)")
    e2e.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    e2e.set_defaults(run=run_e2e)

    from ppllava.bench.vision import DEFAULT_TOWER, STAND_INS

    vision = kinds.add_parser(
        "vision", help="vision tower stopped at its feature layer vs the full forward: time and peak memory",
        description="Time and measure the peak memory of the vision tower (random weights, fixed seed) two ways on "
                    "the same random pixel_values (F, 3, S, S) for each --frames count: 'early stop' "
                    "(TowerFamily.feature_layer: the encoder layers up to vision_feature_layer only, no other state "
                    "kept; what the model runs) and 'full forward' (every layer with output_hidden_states=True, then "
                    "hidden_states[vision_feature_layer]; what it ran before). The two features must be equal "
                    "(torch.equal) or nothing is reported (exit 1). All F frames go through in one call, as the model "
                    "encodes a video. Time: median of --repeats runs after a warm-up, under no_grad, device "
                    "synchronised. Peak memory: one more run of each, as in bench e2e (peak allocated bytes on an "
                    "accelerator, resident-set growth on the CPU), beside the analytical bytes of the hidden states "
                    "each keeps ((layers + 1) states of F x tokens x hidden against one). Reports per frame count "
                    "the seconds and peaks of both, the time saved (fraction) and the memory saved (bytes, ratio), "
                    "with the tower (layers, width, patches, feature layer and layers skipped).")
    options.add_device(vision)
    options.add_dtype(vision)
    vision.add_argument("--frames", default="32,256", help="comma-separated frame counts (default 32,256)")
    vision.add_argument("--tower", default=DEFAULT_TOWER,
                        help=f"vision tower, random weights: {', '.join(STAND_INS)} (default {DEFAULT_TOWER}: "
                             f"{STAND_INS[DEFAULT_TOWER][0]}) or a configs/model architecture's tower (e.g. "
                             f"llava-next-7b: CLIP ViT-L/14-336, meant for an accelerator at 256 frames)")
    vision.add_argument("--repeats", type=int, default=3, help="timed runs per way and frame count (default 3)")
    vision.add_argument("--seed", type=int, default=0, help="seed of the weights and pixel values (default 0)")
    vision.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    vision.set_defaults(run=run_vision)


def _positive_ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) <= 0:
        raise ValueError(f"--{name}: expected comma-separated positive integers, got {text!r}")
    return values


def _resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        width = height = 0
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"--resolution: expected WIDTHxHEIGHT with even sides >= 16, got {text!r}")
    return width, height


def run_data(args) -> int:
    from ppllava.bench.data import bench_data, format_report
    from ppllava.data.readers import READERS

    for name in ("frames", "size", "clips", "clip_frames", "passes"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    readers = args.readers.split(",") if args.readers else None
    unknown = sorted(set(readers or ()) - set(READERS))
    if unknown:
        raise ValueError(f"--readers: unknown {unknown} (known: {', '.join(READERS)})")
    if args.videos and not os.path.isdir(args.videos):
        raise ValueError(f"--videos {args.videos}: not a folder")
    workers = tuple(int(w) for w in args.workers.split(",") if w.strip().isdigit())
    if not workers or len(workers) != len(args.workers.split(",")):
        raise ValueError(f"--workers: expected comma-separated counts >= 0, got {args.workers!r}")
    width, height = _resolution(args.resolution)
    progress = None if args.json else (lambda label: print(f"  timing {label} ...", file=sys.stderr, flush=True))
    report = bench_data(readers, workers, clips=args.clips, clip_frames=args.clip_frames, frames=args.frames,
                        height=height, width=width, size=args.size, passes=args.passes, videos=args.videos,
                        progress=progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def run_ops(args) -> int:
    options.check_geometry(args)
    for name in ("relevance_dim", "repeats", "batch"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    progress = None if args.json else (lambda label: print(f"  timing {label} ...", file=sys.stderr, flush=True))
    report = bench_ops(options.device(args), options.dtype(args), frames=args.frames, size=args.size,
                       relevance_dim=args.relevance_dim, pool_dims=_positive_ints(args.pool_dims, "pool-dims"),
                       repeats=args.repeats, batch=args.batch, progress=progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def run_e2e(args) -> int:
    from ppllava.bench.e2e import bench_e2e, format_report, model_choices

    frames, batch_sizes = _positive_ints(args.frames, "frames"), _positive_ints(args.batch_size, "batch-size")
    if min(frames) < 2:
        raise ValueError(f"--frames must be >= 2 for the video kernel's 2 frames, got {args.frames}")
    for name in ("new_tokens", "repeats", "text_tokens", "questions", "videos"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    known = model_choices()
    if args.model_size not in known and not args.model_size.endswith((".yaml", ".yml")):
        raise ValueError(f"--model-size: unknown {args.model_size!r} (known: {', '.join(known)}, or a .yaml path)")
    options.existing_file(args.model_size if args.model_size.endswith((".yaml", ".yml")) else None, "--model-size")
    resolution = _resolution(args.resolution)
    budget = options.budget(args)
    sweep = (len(frames) > 1 or batch_sizes != (1,) or args.questions > 1 or args.videos is not None
             or any(v is not None for v in budget.values()))
    device, dtype = options.device(args), options.dtype(args)
    options.quiet_loading()
    progress = None if args.json else (lambda label: print(f"  {label} ...", file=sys.stderr, flush=True))
    if sweep:
        from ppllava.bench.sweep import bench_sweep, format_sweep

        report = bench_sweep(device, dtype, frames, batch_sizes, args.model_size, questions=args.questions,
                             videos=args.videos, new_tokens=args.new_tokens, repeats=args.repeats,
                             resolution=resolution, text_tokens=args.text_tokens or 16, seed=args.seed,
                             budget=budget, progress=progress)
        print(json.dumps(report, indent=2) if args.json else format_sweep(report))
        return 0
    report = bench_e2e(device, dtype, size=args.model_size, frames=frames[0], new_tokens=args.new_tokens,
                       repeats=args.repeats, resolution=resolution, text_tokens=args.text_tokens or 64,
                       seed=args.seed, progress=progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def run_vision(args) -> int:
    from ppllava.bench.vision import FeaturesDiffer, bench_vision, format_report, tower_config

    frames = _positive_ints(args.frames, "frames")
    if args.repeats <= 0:
        raise ValueError(f"--repeats: must be positive, got {args.repeats}")
    tower_config(args.tower)                                  # an unknown --tower fails before anything is built
    device, dtype = options.device(args), options.dtype(args)
    progress = None if args.json else (lambda label: print(f"  {label} ...", file=sys.stderr, flush=True))
    try:
        report = bench_vision(device, dtype, tower=args.tower, frames=frames, repeats=args.repeats, seed=args.seed,
                              progress=progress)
    except FeaturesDiffer as e:
        print(f"ppllava bench vision: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def run_flops(args) -> int:
    from ppllava.bench.flops import count_flops, format_flops

    from ppllava.errors import UserError

    if args.frames < 1 or args.text_tokens < 0:
        raise UserError(f"--frames must be >= 1 and --text-tokens >= 0, got {args.frames} and {args.text_tokens}")
    rows = count_flops(args.architecture, args.frames, args.text_tokens)
    print(json.dumps(rows) if args.json else format_flops(args.architecture, args.frames, rows))
    return 0


def run_planted(args) -> int:
    from ppllava.bench.planted import format_demo, run_demo

    options.check_geometry(args)
    print(format_demo(run_demo(options.device(args), options.dtype(args), frames=args.frames, size=args.size,
                               planted_frame=args.frames // 2)))
    return 0

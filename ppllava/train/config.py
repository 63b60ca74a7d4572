"""The training recipe: a YAML file of TrainConfig fields, plus `key=value` overrides.

    ppllava train --config configs/train/llava-video-7b.yaml output_dir=runs/a lr=1e-5 \
        model_overrides.video_kernel=[2,3,3] deepspeed=zero3

Override values are YAML (so `lr=1e-5`, `resume=none`, `frames=16`, `x=[1,2]` all parse); a dotted key
sets one entry of a mapping field. Unknown keys are an error naming the key. Paths (model, data,
output_dir, resume) are taken as given, i.e. relative to the current directory; `deepspeed` is a name
under configs/deepspeed/ or a path.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, parse_yaml, read_yaml

DEEPSPEED_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
PRECISIONS = ("bf16", "fp16", "fp32")
NONFINITE = ("stop", "skip")
GROUPS = ("vision_tower", "prompt_tower", "projector", "llm")


class Recipe:
    """What the training stack asks of a recipe dataclass (TrainConfig, `ppllava align`'s AlignConfig)."""

    deepspeed: str
    betas: tuple
    gradient_checkpointing: bool

    def check_shared(self, bad) -> None:
        """The checks of the fields every recipe has; `bad(name, why)` raises."""
        if not isinstance(self.gradient_checkpointing, bool):
            bad("gradient_checkpointing", "must be true or false")
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2 or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas):
            bad("betas", "must be two numbers in [0, 1)")
        self.betas = tuple(float(b) for b in self.betas)
        self.deepspeed_path()                     # a missing DeepSpeed config: said now, not after the model loads

    def deepspeed_path(self) -> Path:
        return deepspeed_file(self.deepspeed)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


@dataclass
class TrainConfig(Recipe):
    model: str                          # a PPLLaVA checkpoint folder (`ppllava convert` / `ppllava export`)
    data: str                           # a data config YAML (ppllava/data/sources.py)
    output_dir: str                     # checkpoints/, metrics.jsonl, train.log
    deepspeed: str = "zero2"            # configs/deepspeed/<name>.yaml or a path
    precision: str = "bf16"             # bf16 | fp16 | fp32 (DeepSpeed's mixed precision)
    global_batch_size: int = 128        # samples per optimizer step, all processes together
    micro_batch_size: int = 1           # samples per process per forward; accumulation fills the rest
    lr: float = 2e-5
    group_lr: dict = field(default_factory=dict)   # per parameter group learning rate, e.g. {projector: 1e-4}
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup_ratio: float = 0.03
    epochs: float = 1.0                 # may be fractional
    max_steps: int | None = None        # stop after this many optimizer steps (a cap on epochs)
    grad_clip: float = 1.0
    gradient_checkpointing: bool = True
    frames: int | None = None           # frames per video for every dataset (None: each dataset's own)
    model_overrides: dict = field(default_factory=dict)   # PPLLaVAConfig fields: kernels, train_* groups, ...
    workers: int = 4                    # DataLoader workers per process
    seed: int = 42
    deterministic: bool = False         # torch.use_deterministic_algorithms: a rerun on the same machine repeats
                                        #   bit for bit (on CUDA it needs CUBLAS_WORKSPACE_CONFIG=:4096:8)
    log_every: int = 10                 # optimizer steps between log lines (metrics.jsonl gets every step)
    save_every: int = 500               # optimizer steps between checkpoints (and one at the end)
    keep_last: int = 2                  # complete checkpoints kept
    resume: str = "auto"                # auto (the newest complete checkpoint in output_dir), none, or a folder
    nonfinite: str = "stop"             # a non-finite loss: stop the run, or skip that micro-batch
    max_nonfinite_skips: int = 10       # with nonfinite=skip: stop anyway after this many

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        def bad(name, why):
            raise ValueError(f"train config: {name} {why}, got {getattr(self, name)!r}")

        def integer(name, low, optional=False):
            value = getattr(self, name)
            if not (optional and value is None) and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                bad(name, f"must be an int >= {low}" + (" or null" if optional else ""))

        def number(name, low, high=math.inf, low_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < low or value >= high or (low_open and value == low):
                bad(name, f"must be a finite number {'>' if low_open else '>='} {low}"
                          + (f" and < {high}" if high != math.inf else ""))

        for name in ("model", "data", "output_dir", "deepspeed", "resume"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                bad(name, "must be a non-empty string")
        if self.precision not in PRECISIONS:
            bad("precision", f"must be one of {', '.join(PRECISIONS)}")
        if self.nonfinite not in NONFINITE:
            bad("nonfinite", f"must be one of {', '.join(NONFINITE)}")
        for name in ("global_batch_size", "micro_batch_size", "log_every", "save_every", "keep_last"):
            integer(name, 1)
        for name in ("workers", "seed", "max_nonfinite_skips"):
            integer(name, 0)
        integer("max_steps", 1, optional=True)
        integer("frames", 1, optional=True)
        number("lr", 0, low_open=True)
        number("epochs", 0, low_open=True)
        number("weight_decay", 0)
        number("grad_clip", 0)
        number("warmup_ratio", 0, 1)
        self.check_shared(bad)
        if not isinstance(self.deterministic, bool):
            bad("deterministic", "must be true or false")
        if not isinstance(self.group_lr, dict) or set(self.group_lr) - set(GROUPS) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in self.group_lr.values()):
            bad("group_lr", f"must map parameter groups ({', '.join(GROUPS)}) to learning rates > 0")
        if not isinstance(self.model_overrides, dict):
            bad("model_overrides", "must be a mapping of model config fields")



def deepspeed_file(name: str) -> Path:
    """configs/deepspeed/<name>.yaml, or `name` itself when it is a .yaml/.yml/.json path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.exists():
            raise FileNotFoundError(f"deepspeed config {path} does not exist")
        if path.is_dir():
            raise UserError(f"deepspeed config {path} is a folder; expected a YAML or JSON file")
        return path
    path = DEEPSPEED_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in DEEPSPEED_DIR.glob("*.yaml")))
        raise ValueError(f"unknown deepspeed config {name!r}; known: {known} (or pass a file)")
    return path


def apply_override(raw: dict, item: str, config_class: type | None = None) -> None:
    """Apply one `key=value` (or `key.sub=value`) to the raw config mapping of `config_class` (a dataclass;
    TrainConfig by default), in place."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"override {item!r} is not key=value")
    value = parse_yaml(text, f"override {item!r}") if text else ""
    head, _, sub = key.partition(".")
    names = {f.name for f in dataclasses.fields(config_class or TrainConfig)}
    if head not in names:
        raise ValueError(f"override {item!r}: unknown key {head!r} (known: {', '.join(sorted(names))})")
    if sub:
        target = raw.setdefault(head, {})
        if not isinstance(target, dict):
            raise ValueError(f"override {item!r}: {head} is not a mapping")
        target[sub] = value
    else:
        raw[head] = value


def config_from_dict(raw: dict, where: str = "train config") -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    missing = [n for n in ("model", "data", "output_dir") if raw.get(n) in (None, "")]
    if missing:
        raise ValueError(f"{where}: {', '.join(missing)} must be set (in the file or as key=value)")
    for key in ("lr", "weight_decay", "warmup_ratio", "epochs", "grad_clip"):   # YAML reads 2e-5 as a string
        if isinstance(raw.get(key), str):
            try:
                raw[key] = float(raw[key])
            except ValueError:
                raise ValueError(f"{where}: {key} must be a number, got {raw[key]!r}") from None
    if isinstance(raw.get("group_lr"), dict):
        try:
            raw["group_lr"] = {k: float(v) for k, v in raw["group_lr"].items()}
        except (TypeError, ValueError):
            raise ValueError(f"{where}: group_lr values must be numbers, got {raw['group_lr']!r}") from None
    return TrainConfig(**raw)


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """The recipe at `path` (or nothing) with `overrides` applied on top."""
    raw, where = read_recipe(path, overrides, TrainConfig, "train config")
    return config_from_dict(raw, where)


def read_recipe(path: str | Path | None, overrides, config_class: type, kind: str) -> tuple[dict, str]:
    """The raw mapping of a recipe file (or nothing) with `key=value` overrides applied, and where it came from."""
    raw: dict = {}
    where = kind
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{kind} {path} does not exist")
        raw = read_yaml(path) or {}                    # a folder is named as one there
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of {config_class.__name__} fields")
        where = str(path)
    for item in overrides:
        apply_override(raw, item, config_class)
    return raw, where

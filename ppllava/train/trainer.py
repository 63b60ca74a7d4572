"""`ppllava train`: PPLLaVA on the DeepSpeed engine, the same loop on CPU, CUDA and NPU.

One optimizer step is `accumulation` successful micro-batches on every process. Every process takes
part in every collective, whatever its micro-batch holds (stand_in.py). A non-finite loss anywhere is
seen by all processes at once (one all-reduce per micro-batch) and handled by the `nonfinite` policy.
"""

from __future__ import annotations

import logging
import signal
import warnings
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from backends.device import reproducible_numerics

from ..data import ChatEncoder, Collator, ConversationDataset, DataError, load_data_config, load_samples
from ..model.checkpoint import PROMPT_TOKENIZER_DIR, load_model, load_tokenizers, read_config
from .. import distributed
from ..errors import read_yaml
from .checkpoint import Checkpoints, choose_checkpoint, find_checkpoint
from .config import TrainConfig
from .deepspeed_config import deepspeed_config
from .metrics import Metrics
from .optim import build_optimizer, scheduler_factory
from .stand_in import StandIn
from .stream import MicroBatches, Position

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    pass


# recipe fields that decide the numbers from a checkpoint on: resuming with other values is an error
SAME_ON_RESUME = ("model", "data", "frames", "model_overrides", "precision", "deepspeed", "global_batch_size",
                  "micro_batch_size", "lr", "group_lr", "weight_decay", "betas", "warmup_ratio", "epochs",
                  "max_steps", "grad_clip", "seed")
RECIPE_FILE = "train_config.yaml"


def check_same_recipe(cfg, folder: Path, fields: tuple[str, ...] = SAME_ON_RESUME) -> None:
    """Raise if the recipe saved in checkpoint `folder` differs from `cfg` (a TrainConfig or AlignConfig) in `fields`."""
    if not (folder / RECIPE_FILE).is_file():
        raise ValueError(f"checkpoint {folder} holds no {RECIPE_FILE}: not a complete checkpoint of ppllava train or "
                         f"align; give another (resume=DIR) or a new output_dir")
    saved = read_yaml(folder / RECIPE_FILE)
    now = cfg.to_dict()
    changed = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in fields if saved.get(k) != now[k]]
    if changed:
        raise ValueError(f"resuming {folder} with a different recipe ({'; '.join(changed)}): the data order, "
                         f"schedule and precision come from the checkpoint; use its values, or start a new run "
                         f"(resume=none, a new output_dir) from an export of it")


def model_config_with(directory, overrides: dict):
    """The checkpoint's model config with `overrides` (PPLLaVAConfig fields) applied and checked."""
    config = read_config(directory)
    for key, value in overrides.items():
        if not hasattr(config, key) or key in ("vision_config", "prompt_config", "text_config"):
            raise ValueError(f"model_overrides: {key!r} is not a PPLLaVAConfig setting that may change")
        setattr(config, key, value)
    config.check()
    return config


def build_data(cfg: TrainConfig, model_config, tokenizer, prompt_tokenizer):
    data = load_data_config(cfg.data)
    if cfg.frames is not None:
        data = replace(data, datasets=tuple(replace(d, frames=cfg.frames) for d in data.datasets))
    samples = load_samples(data)
    encoder = ChatEncoder.for_config(tokenizer, model_config)
    dataset = ConversationDataset(samples, data, model_config, encoder, train=True, seed=cfg.seed)
    return data, dataset, Collator.for_model(model_config, tokenizer, prompt_tokenizer)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        self.cfg = cfg
        self.was_deterministic = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic:                                      # first: MKL reads its switch at its first call
            reproducible_numerics()
        self.group = distributed.start()
        torch.manual_seed(cfg.seed + self.group.rank)              # dropout differs per process, reproducibly
        self.out = Path(cfg.output_dir)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"output_dir {self.out} is a file: give a folder for the run's checkpoints and metrics")
        self.checkpoints = Checkpoints(self.out / "checkpoints", self.group, cfg.keep_last)
        self.resume_from = self._choose_checkpoint()

        config = model_config_with(cfg.model, cfg.model_overrides)
        self.tokenizer, self.prompt_tokenizer = load_tokenizers(cfg.model)
        self.data, dataset, collator = build_data(cfg, config, self.tokenizer, self.prompt_tokenizer)
        world, micro = self.group.world_size, cfg.micro_batch_size
        if cfg.global_batch_size % (micro * world):
            raise ValueError(f"global_batch_size {cfg.global_batch_size} is not a multiple of micro_batch_size "
                             f"{micro} x {world} processes")
        self.accumulation = cfg.global_batch_size // (micro * world)
        self.stream = MicroBatches(dataset, collator, micro, self.group.rank, world, cfg.seed, cfg.workers,
                                   self.data.max_skip_fraction)
        epoch_steps = int(cfg.epochs * self.stream.per_epoch) // self.accumulation
        self.total_steps = min(epoch_steps, cfg.max_steps or epoch_steps)
        if self.total_steps < 1:
            raise ValueError(f"{len(dataset)} samples give {self.stream.per_epoch} micro-batches per process per epoch: "
                             f"too few for one step of global batch {cfg.global_batch_size} on {world} processes")

        with_video = {s.dataset for s in dataset.samples if any(m.kind == "video" for m in s.media)}
        longest = max((d.frames for i, d in enumerate(self.data.datasets) if i in with_video), default=0)
        if config.btadapter_depth and longest > config.btadapter_max_frames:
            raise ValueError(f"frames: videos of {longest} frames, more than the BT-Adapter's time embedding holds "
                             f"({config.btadapter_max_frames}, btadapter_max_frames): train on at most that many")
        config.default_frames = longest or config.default_frames   # infer's default for --frames: the most trained
        model = load_model(cfg.model, config=config)
        self.trains = model.apply_trainable()
        if cfg.gradient_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.group_lr)
        import deepspeed
        ds_config = deepspeed_config(cfg, self.accumulation, world)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler_factory(self.total_steps, cfg.warmup_ratio),
            config=ds_config)
        self.stand_in = StandIn(config, collator)
        if self.group.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics(self.out / "metrics.jsonl", self.group.is_main)
        self.step, self.start = 0, Position()
        self.nonfinite_skips = 0
        self.stop_requested = False

    # -- one micro-batch -----------------------------------------------------------------------------
    def _loss(self, batch: dict) -> torch.Tensor:
        inputs, counts = self.stand_in.complete(batch)
        inputs = {k: v.to(self.group.device) for k, v in inputs.items()}
        if counts:
            return self.engine(**inputs, use_cache=False).loss
        inputs.pop("labels")                                   # all ignored: a zero loss that reaches every parameter
        return self.engine(**inputs, use_cache=False).logits.float().sum() * 0.0

    def _micro_step(self, batches) -> tuple[float, dict | None]:
        """Forward, backward, engine.step on the next micro-batch; (its loss or nan if dropped, the batch)."""
        try:
            batch, error = next(batches), None
        except DataError as e:                                 # too many unreadable samples: stop everyone
            batch, error = {"skipped": []}, e
        loss = self._loss(batch)
        finite = bool(torch.isfinite(loss.detach()))
        nonfinite, failed = self.group.sum([float(not finite), float(error is not None)])
        if failed:
            raise error or DataError("another process stopped on unreadable data (see its log)")
        if nonfinite:
            self._nonfinite("loss", finite)
            return float("nan"), None
        self.engine.backward(loss)
        self.engine.step()
        return loss.item(), batch

    def _nonfinite(self, what: str, here: bool) -> None:
        """Apply the non-finite policy (every process calls this together); `here`: seen on this process."""
        where = f"step {self.step + 1}, epoch {self.stream.position.epoch}"
        if here and what == "loss":
            log.warning("rank %d: non-finite loss at %s", self.group.rank, where)
        if self.cfg.nonfinite == "stop":
            raise NonFiniteLoss(f"non-finite {what} at {where} (nonfinite=stop); the last checkpoint is intact: "
                                f"lower lr, or set nonfinite=skip to drop such micro-batches")
        self.nonfinite_skips += 1
        if self.nonfinite_skips > self.cfg.max_nonfinite_skips:
            raise NonFiniteLoss(f"{self.nonfinite_skips} non-finite losses or gradients (max_nonfinite_skips "
                                f"{self.cfg.max_nonfinite_skips}); stopping at {where}")
        if self.group.is_main:
            dropped = "micro-batch skipped" if what == "loss" else "optimizer step skipped"
            tqdm.write(f"non-finite {what} at {where}: {dropped} on every process "
                       f"({self.nonfinite_skips} of at most {self.cfg.max_nonfinite_skips})")

    def _check_step_applied(self) -> bool:
        """DeepSpeed skips the optimizer step on inf/nan gradients (fp16 overflow, or bf16's check)."""
        if self.engine.was_step_applied():
            return True
        if self.cfg.precision == "fp16":
            if self.group.is_main:
                tqdm.write(f"step {self.step + 1}: fp16 overflow, step skipped and loss scale lowered")
        else:
            self._nonfinite("gradients", True)
        return False

    # -- resume, save --------------------------------------------------------------------------------
    def _choose_checkpoint(self) -> Path | None:
        """The checkpoint this run resumes from (the main process decides for all), its recipe checked."""
        return choose_checkpoint(self.checkpoints, self.cfg.resume, lambda folder: check_same_recipe(self.cfg, folder))

    def resume(self) -> None:
        folder = self.resume_from
        if folder is None:
            self.metrics.keep_until(0)                         # a fresh start: no rows of an earlier attempt
            return
        if folder.parent.resolve() == self.checkpoints.root.resolve():
            self.checkpoints.set_aside_newer(folder)
        state = self.checkpoints.load(self.engine, folder)
        self.step, self.start = state["step"], Position(**state["position"])
        self.nonfinite_skips = state.get("nonfinite_skips", 0)
        self.metrics.keep_until(self.step)
        if self.group.is_main:
            tqdm.write(f"resumed from {folder}: step {self.step}, epoch {self.start.epoch}, "
                       f"micro-batch {self.start.index}")

    def _save(self) -> Path:
        state = {"step": self.step, "total_steps": self.total_steps, "precision": self.cfg.precision,
                 "position": vars(self.stream.position), "nonfinite_skips": self.nonfinite_skips}

        def extra(folder: Path) -> None:
            self.engine.module.config.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
            self.prompt_tokenizer.save_pretrained(folder / PROMPT_TOKENIZER_DIR)
            (folder / RECIPE_FILE).write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

        folder = self.checkpoints.save(self.engine, self.step, state, extra)
        self.metrics.restart()
        return folder

    # -- the loop ------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True
        log.warning("rank %d: %s received: saving a checkpoint after this step", self.group.rank,
                    signal.Signals(signum).name)

    def _describe(self) -> str:
        trains = ", ".join(g for g, on in self.trains.items() if on)
        stage = self.engine.zero_optimization_stage() if self.engine.zero_optimization() else 0
        return (f"training {self.total_steps} steps of {self.cfg.global_batch_size} samples "
                f"({self.group.world_size} process(es) x {self.cfg.micro_batch_size} x {self.accumulation} "
                f"accumulation) on {self.group.device} ({self.group.backend}), {self.cfg.precision}, ZeRO-{stage}; "
                f"trains {trains}; {len(self.stream.dataset)} samples, {self.stream.per_epoch} micro-batches "
                f"per process per epoch")

    def _lr(self) -> float:
        """The recipe's `lr` scaled by the schedule now (group_lr groups scale alike)."""
        return self.cfg.lr * self.scheduler.get_last_lr()[0] / self.scheduler.base_lrs[0]

    def _train_step(self, batches) -> dict:
        """`accumulation` micro-batches that train on every process, then the step's figures (all processes)."""
        losses, tokens, samples, counted = [], 0, 0, 0
        lr = self._lr()                                          # the rate this step trains with
        while counted < self.accumulation:
            loss, batch = self._micro_step(batches)
            if batch is None:                                    # dropped by the non-finite policy
                continue
            counted += 1
            if "input_ids" in batch:                             # not a stand-in for unreadable samples
                losses.append(loss)
                tokens += int(batch["attention_mask"].sum())
                samples += len(batch["input_ids"])
        applied = self._check_step_applied()
        self.step += 1
        loss_sum, loss_n, tokens, samples, stop = self.group.sum(
            [sum(losses), len(losses), tokens, samples, float(self.stop_requested)])
        row = {"step": self.step, "epoch": self.stream.position.epoch, "loss": loss_sum / max(loss_n, 1), "lr": lr,
               "tokens": int(tokens), "samples": int(samples)}
        if not applied:
            row["applied"] = False
        self.metrics.record(row, loss_sum, loss_n)
        return {**row, "stop": bool(stop)}

    def run(self) -> dict:
        self.resume()
        if self.group.is_main:
            tqdm.write(self._describe())
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                   disable=None if self.group.is_main else True, dynamic_ncols=True)   # None: only on a terminal
        batches = self.stream.batches(self.start)
        self.metrics.restart()
        row = {"stop": False}
        self.engine.train()
        try:
            while self.step < self.total_steps and not row["stop"]:
                row = self._train_step(batches)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    self.metrics.log(self.step, self.total_steps, row["epoch"], row["lr"])
                if self.step % self.cfg.save_every == 0 or self.step == self.total_steps or row["stop"]:
                    self._save()
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
        if self.group.is_main:
            if row["stop"]:
                tqdm.write(f"stopped by signal at step {self.step}; run the same command again to resume")
            tqdm.write(f"data: {self.stream.monitor.summary()} (process 0)")
        return {"steps": self.step, "total_steps": self.total_steps, "stopped": row["stop"],
                "checkpoint": str(find_checkpoint(self.out)) if self.step else None}

    def close(self, clean: bool = True) -> None:
        """Free the engine and leave the process group (every process, also after an error)."""
        close_engine(getattr(self, "engine", None), clean)
        torch.use_deterministic_algorithms(getattr(self, "was_deterministic", False))   # MKL's switch stays


def run_closing(make) -> dict:
    """`make()` a run (an object with run() and close(clean)), run it, and always leave the process group:
    with a barrier after success, without one after an error (the other processes may be gone)."""
    runner = None
    clean = False
    try:
        runner = make()
        result = runner.run()
        clean = True
        return result
    finally:
        if runner is not None:
            runner.close(clean)
        else:
            distributed.stop(barrier=False)


def close_engine(engine, clean: bool) -> None:
    """Free a DeepSpeed engine (if one was made) and leave the process group."""
    if engine is not None:
        engine.destroy()
    distributed.stop(barrier=clean)


def train(cfg: TrainConfig) -> dict:
    return run_closing(lambda: Trainer(cfg))

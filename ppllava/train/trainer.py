"""`ppllava train`: PPLLaVA on the DeepSpeed engine, the same loop on CPU, CUDA and NPU.

One optimizer step is `accumulation` successful micro-batches on every process. Every process takes
part in every collective, whatever its micro-batch holds (stand_in.py). A non-finite loss anywhere is
seen by all processes at once (one all-reduce per micro-batch) and handled by the `nonfinite` policy.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from ..data import ChatEncoder, Collator, ConversationDataset, load_data_config, load_samples
from ..model.checkpoint import PROMPT_TOKENIZER_DIR, load_model, load_tokenizers, read_config
from . import distributed
from .checkpoint import Checkpoints, complete_checkpoints, find_checkpoint
from .config import TrainConfig
from .deepspeed_config import deepspeed_config
from .optim import build_optimizer, scheduler_factory
from .stand_in import StandIn
from .stream import MicroBatches, Position

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    pass


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
        self.group = distributed.start()
        torch.manual_seed(cfg.seed + self.group.rank)              # dropout differs per process, reproducibly
        self.out = Path(cfg.output_dir)
        self.checkpoints = Checkpoints(self.out / "checkpoints", self.group, cfg.keep_last)

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

    def _micro_step(self, batch: dict) -> tuple[float, bool]:
        """Forward, backward, engine.step; returns (loss, whether it counted toward the step)."""
        loss = self._loss(batch)
        finite = bool(torch.isfinite(loss.detach()))
        if self.group.sum([0.0 if finite else 1.0])[0] > 0:
            self._nonfinite(batch, finite)
            return float("nan"), False
        self.engine.backward(loss)
        self.engine.step()
        return loss.item(), "input_ids" in batch

    def _nonfinite(self, batch: dict, finite: bool) -> None:
        where = f"step {self.step + 1}, epoch {self.stream.position.epoch}"
        if not finite:
            log.warning("rank %d: non-finite loss at %s", self.group.rank, where)
        if self.cfg.nonfinite == "stop":
            raise NonFiniteLoss(f"non-finite loss at {where} (nonfinite=stop); the last checkpoint is intact: "
                                f"lower lr, or set nonfinite=skip to drop such micro-batches")
        self.nonfinite_skips += 1
        if self.nonfinite_skips > self.cfg.max_nonfinite_skips:
            raise NonFiniteLoss(f"{self.nonfinite_skips} non-finite losses (max_nonfinite_skips "
                                f"{self.cfg.max_nonfinite_skips}); stopping at {where}")
        if self.group.is_main:
            tqdm.write(f"non-finite loss at {where}: micro-batch skipped on every process "
                       f"({self.nonfinite_skips} of at most {self.cfg.max_nonfinite_skips})")

    # -- resume, save --------------------------------------------------------------------------------
    def resume(self) -> None:
        self.checkpoints.clean_partial()
        if self.cfg.resume == "none":
            if complete_checkpoints(self.checkpoints.root):
                raise ValueError(f"{self.checkpoints.root} already holds checkpoints and resume=none: "
                                 f"choose a new output_dir, or resume=auto")
            return
        folder = (find_checkpoint(self.cfg.resume) if self.cfg.resume != "auto"
                  else (complete_checkpoints(self.checkpoints.root) or [None])[-1])
        if folder is None:
            return
        state = self.checkpoints.load(self.engine, folder)
        self.step, self.start = state["step"], Position(**state["position"])
        self.nonfinite_skips = state.get("nonfinite_skips", 0)
        if self.group.is_main:
            tqdm.write(f"resumed from {folder}: step {self.step}, epoch {self.start.epoch}, "
                       f"micro-batch {self.start.index}")
            self._truncate_metrics(self.step)

    def _save(self) -> Path:
        state = {"step": self.step, "total_steps": self.total_steps, "precision": self.cfg.precision,
                 "position": vars(self.stream.position),
                 "nonfinite_skips": self.nonfinite_skips}

        def extra(folder: Path) -> None:
            self.engine.module.config.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
            self.prompt_tokenizer.save_pretrained(folder / PROMPT_TOKENIZER_DIR)
            (folder / "train_config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

        return self.checkpoints.save(self.engine, self.step, state, extra)

    # -- metrics -------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _truncate_metrics(self, step: int) -> None:
        if self.metrics_path.is_file():
            lines = [l for l in self.metrics_path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
            self.metrics_path.write_text("".join(l + "\n" for l in lines))

    def _record(self, row: dict) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    # -- the loop ------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True
        log.warning("rank %d: %s received: saving a checkpoint after this step", self.group.rank,
                    signal.Signals(signum).name)

    def _describe(self) -> str:
        trains = ", ".join(g for g, on in self.trains.items() if on)
        return (f"training {self.total_steps} steps of {self.cfg.global_batch_size} samples "
                f"({self.group.world_size} processes x {self.cfg.micro_batch_size} x {self.accumulation} accumulation) "
                f"on {self.group.device} ({self.group.backend}), {self.cfg.precision}, "
                f"{self.engine.zero_optimization_stage() if self.engine.zero_optimization() else 0}-stage ZeRO; "
                f"trains {trains}; {len(self.stream.dataset)} samples, {self.stream.per_epoch} micro-batches "
                f"per process per epoch")

    def run(self) -> dict:
        self.resume()
        if self.group.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            tqdm.write(self._describe())
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                   disable=None if self.group.is_main else True, dynamic_ncols=True)   # None: only on a terminal
        batches = self.stream.batches(self.start)
        window = [0.0] * 4                                      # loss sum, loss count, tokens, samples
        clock, last = time.perf_counter(), None
        self.engine.train()
        try:
            while self.step < self.total_steps:
                losses, tokens, samples, counted = [], 0, 0, 0
                lr = self.scheduler.get_last_lr()[0]                # the rate this step trains with
                while counted < self.accumulation:
                    batch = next(batches)
                    loss, real = self._micro_step(batch)
                    if loss == loss:                             # not nan: the micro-batch trained
                        counted += 1
                    if real:
                        losses.append(loss)
                        tokens += int(batch["attention_mask"].sum())
                        samples += len(batch["input_ids"])
                self.step += 1
                loss_sum, loss_n, tokens, samples, stop = self.group.sum(
                    [sum(losses), len(losses), tokens, samples, float(self.stop_requested)])
                window = [a + b for a, b in zip(window, (loss_sum, loss_n, tokens, samples))]
                last = {"step": self.step, "epoch": self.stream.position.epoch, "loss": loss_sum / max(loss_n, 1),
                        "lr": lr, "tokens": int(tokens), "samples": int(samples)}
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                if self.group.is_main:
                    self._record(last)
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    self._log(window, time.perf_counter() - clock, lr)
                    window, clock = [0.0] * 4, time.perf_counter()
                if self.step % self.cfg.save_every == 0 or self.step == self.total_steps or stop:
                    self._save()
                if stop:
                    if self.group.is_main:
                        tqdm.write(f"stopped by signal at step {self.step}; run the same command again to resume")
                    break
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
        if self.group.is_main:
            tqdm.write(f"data: {self.stream.monitor.summary()} (process 0)")
        return {"steps": self.step, "total_steps": self.total_steps, "last": last,
                "checkpoint": str(find_checkpoint(self.out)) if self.step else None}

    def _log(self, window: list[float], seconds: float, lr: float) -> None:
        if not self.group.is_main:
            return
        loss_sum, loss_n, tokens, samples = window
        tqdm.write(f"step {self.step}/{self.total_steps} | epoch {self.stream.position.epoch} | "
                   f"loss {loss_sum / max(loss_n, 1):.4f} | lr {lr:.3e} | "
                   f"{tokens / seconds:.0f} tokens/s | {samples / seconds:.2f} samples/s")

    def close(self, clean: bool = True) -> None:
        """Free the engine and leave the process group (every process, also after an error)."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.destroy()
        distributed.stop(barrier=clean)


def train(cfg: TrainConfig) -> dict:
    trainer = None
    clean = False
    try:
        trainer = Trainer(cfg)
        result = trainer.run()
        clean = True
        return result
    finally:
        if trainer is not None:
            trainer.close(clean)
        else:
            distributed.stop(barrier=False)

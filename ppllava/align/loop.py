"""`ppllava align`: the contrastive pass on the training stack (DeepSpeed engine, process group, stream of
micro-batches, atomic checkpoints and resume, metrics.jsonl), with the vision tower frozen outside the engine.

Each process runs its micro-batch of pairs through the frozen vision tower (no grad), then the engine
(AlignedTextTower: patch projection, text tower, loss gathered over processes). Every process's
micro-batch has micro_batch_size rows: unreadable pairs are replaced by masked rows (never by other
pairs), so the gathers line up. The result is written to `<output_dir>/text_tower/` (also inside every
checkpoint), the folder `ppllava convert --text-tower` takes with an InternVL base.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import warnings
from pathlib import Path

import torch
import yaml
from tqdm import tqdm
from transformers import AutoTokenizer, CLIPModel, CLIPTextModelWithProjection

from .. import distributed
from ..data import DataError, Preprocessor
from ..model.aligned import AlignedTextTower, AlignedTextTowerConfig
from ..train.checkpoint import Checkpoints, choose_checkpoint, find_checkpoint
from ..train.deepspeed_config import deepspeed_config
from ..train.metrics import Metrics
from ..train.optim import build_optimizer, scheduler_factory
from ..train.stream import MicroBatches, Position
from ..train.trainer import RECIPE_FILE, NonFiniteLoss, check_same_recipe, close_engine, run_closing
from .config import AlignConfig
from .pairs import PairCollator, PairDataset, load_pairs
from .vision import load_vision_tower, patch_tokens

log = logging.getLogger(__name__)

TOWER_DIR = "text_tower"
SAME_ON_RESUME = ("vision", "text", "data", "loss", "vision_feature_layer", "vision_feature_select_strategy",
                  "deepspeed", "precision", "global_batch_size", "micro_batch_size", "lr", "weight_decay", "betas",
                  "warmup_ratio", "epochs", "max_steps", "grad_clip", "max_logit_scale", "seed")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def start_tower(cfg: AlignConfig, vision_config) -> AlignedTextTower:
    """An AlignedTextTower whose text tower starts from the CLIP text weights in `cfg.text`."""
    path = Path(cfg.text) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"text {cfg.text}: no config.json (expected a local CLIP model folder)")
    model_type = json.loads(path.read_text()).get("model_type")
    if model_type == "clip":
        clip = CLIPModel.from_pretrained(cfg.text)
        text = CLIPTextModelWithProjection(clip.config.text_config)
        text.text_model.load_state_dict(clip.text_model.state_dict())
        text.text_projection.load_state_dict(clip.text_projection.state_dict())
    elif model_type == "clip_text_model":
        text = CLIPTextModelWithProjection.from_pretrained(cfg.text)
    else:
        raise ValueError(f"text {cfg.text} is a {model_type!r} model; start from a CLIP text tower "
                         f"(CLIPModel or CLIPTextModelWithProjection)")
    config = AlignedTextTowerConfig(text_config=text.config.to_dict(), vision_config=vision_config.to_dict(),
                                    loss=cfg.loss, vision_feature_layer=cfg.vision_feature_layer,
                                    vision_feature_select_strategy=cfg.vision_feature_select_strategy)
    tower = AlignedTextTower(config)
    tower.text_tower.load_state_dict(text.state_dict())
    return tower


@torch.no_grad()
def clamp_logit_scale(param: torch.nn.Parameter, limit: float) -> float:
    """open_clip's clamp of the learnt log temperature to [0, limit] after a step, on the parameter and on
    DeepSpeed's fp32 master copy, which ZeRO copies over the parameter at every step (every process calls
    this: reading the master copy is a collective). Returns the clamped value."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    master = safe_get_full_fp32_param(param)
    if master is not None:
        master = master.clamp(0, limit)
        safe_set_full_fp32_param(param, master)
    param.clamp_(0, limit)
    return float(master if master is not None else param.float())


def pad_rows(batch: dict, rows: int, pad_id: int) -> dict:
    """The micro-batch with exactly `rows` rows and a `valid` mask: missing rows (unreadable pairs) repeat
    the first pair, or are blank, so that their numbers stay finite; the loss leaves them out."""
    if "input_ids" not in batch:                            # every pair of this micro-batch was unreadable
        return {"pixel_values": None, "input_ids": torch.full((rows, 2), pad_id), "attention_mask":
                torch.ones(rows, 2, dtype=torch.long), "valid": torch.zeros(rows, dtype=torch.bool)}
    n = len(batch["input_ids"])
    out = {k: torch.cat([batch[k], batch[k][:1].expand(rows - n, *batch[k].shape[1:])])
           for k in ("pixel_values", "input_ids", "attention_mask")}
    out["valid"] = torch.arange(rows) < n
    return out


@torch.no_grad()
def retrieval_accuracy(tower: AlignedTextTower, vision, dataset: PairDataset, collator: PairCollator,
                       cfg: AlignConfig, device: torch.device, batch: int = 64) -> dict:
    """Image -> caption top-1 accuracy over the distinct captions of `dataset` (chance: 1 / their number)."""
    was_training = tower.training
    tower.eval()
    images, truths = [], []                          # one batch of pixels in memory at a time
    for start in range(0, len(dataset), batch):
        items = [it for it in (dataset[i] for i in range(start, min(start + batch, len(dataset))))
                 if isinstance(it, dict)]
        if items:
            pixels = torch.stack([it["pixel_values"] for it in items]).to(device)
            images.append(tower.image_features(patch_tokens(vision, pixels, cfg.vision_feature_layer,
                                                            cfg.vision_feature_select_strategy)))
            truths += [it["caption"] for it in items]
    captions = sorted(set(truths))
    texts = []
    for i in range(0, len(captions), batch):
        text = collator.tokenizer(captions[i:i + batch], padding="longest", truncation=True,
                                  max_length=collator.max_length, return_tensors="pt")
        texts.append(tower.text_features(text["input_ids"].to(device), text["attention_mask"].to(device)))
    predicted = (torch.cat(images) @ torch.cat(texts).T).argmax(dim=1).tolist() if truths else []
    correct = sum(captions[p] == truth for p, truth in zip(predicted, truths))
    tower.train(was_training)
    return {"accuracy": correct / max(len(truths), 1), "chance": 1 / max(len(captions), 1), "pairs": len(truths),
            "captions": len(captions)}


class Aligner:
    def __init__(self, cfg: AlignConfig):
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        self.cfg = cfg
        self.group = distributed.start()
        torch.manual_seed(cfg.seed + self.group.rank)
        self.out = Path(cfg.output_dir)
        self.checkpoints = Checkpoints(self.out / "checkpoints", self.group, cfg.keep_last)
        self.resume_from = choose_checkpoint(self.checkpoints, cfg.resume,
                                             lambda folder: check_same_recipe(cfg, folder, SAME_ON_RESUME))
        dtype = DTYPES[cfg.precision]
        self.vision, base_config = load_vision_tower(cfg.vision, dtype)
        self.vision.to(self.group.device)
        layers = base_config.vision_config.num_hidden_layers
        if not -(layers + 1) <= cfg.vision_feature_layer <= layers:
            raise ValueError(f"vision_feature_layer {cfg.vision_feature_layer} is outside the vision tower's hidden "
                             f"states (-{layers + 1}..{layers})")
        model = start_tower(cfg, base_config.vision_config)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.text)
        preprocess = Preprocessor.for_config(model.config)
        self.collator = PairCollator(self.tokenizer, model.config.text_config.max_position_embeddings)
        dataset = PairDataset(load_pairs(cfg.data), preprocess)
        self.eval_set = PairDataset(load_pairs(cfg.eval_data), preprocess) if cfg.eval_data else None
        world, micro = self.group.world_size, cfg.micro_batch_size
        if cfg.global_batch_size % (micro * world):
            raise ValueError(f"global_batch_size {cfg.global_batch_size} is not a multiple of micro_batch_size "
                             f"{micro} x {world} processes")
        self.accumulation = cfg.global_batch_size // (micro * world)
        self.stream = MicroBatches(dataset, self.collator, micro, self.group.rank, world, cfg.seed, cfg.workers,
                                   cfg.max_skip_fraction)
        epoch_steps = int(cfg.epochs * self.stream.per_epoch) // self.accumulation
        self.total_steps = min(epoch_steps, cfg.max_steps or epoch_steps)
        if self.total_steps < 1:
            raise ValueError(f"{len(dataset)} pairs give {self.stream.per_epoch} micro-batches per process per epoch: "
                             f"too few for one step of global batch {cfg.global_batch_size} on {world} processes")
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        import deepspeed
        ds_config = deepspeed_config(cfg, self.accumulation, world)
        if ds_config.get("zero_optimization", {}).get("stage", 0) >= 3:
            raise ValueError(f"deepspeed {cfg.deepspeed}: ZeRO-3 is not supported by `ppllava align` (the text tower "
                             f"is small; use zero2)")
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, {}),
            lr_scheduler=scheduler_factory(self.total_steps, cfg.warmup_ratio), config=ds_config)
        if self.group.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics(self.out / "metrics.jsonl", self.group.is_main)
        self.step, self.start = 0, Position()
        self.stop_requested = False

    # -- one step ------------------------------------------------------------------------------------
    def _micro_step(self, batches) -> tuple[float, int, int]:
        """Forward, backward, engine.step on the next micro-batch: (its loss, pairs, caption tokens)."""
        try:
            batch, error = next(batches), None
        except DataError as e:                                 # too many unreadable pairs: stop everyone
            batch, error = {"skipped": []}, e
        rows = pad_rows(batch, self.cfg.micro_batch_size, self.tokenizer.pad_token_id or 0)
        failed = self.group.sum([float(error is not None)])[0]
        if failed:
            raise error or DataError("another process stopped on unreadable data (see its log)")
        device = self.group.device
        if rows["pixel_values"] is None:
            size = Preprocessor.for_config(self.engine.module.config).size
            rows["pixel_values"] = torch.zeros(self.cfg.micro_batch_size, 3, size, size)
        patches = patch_tokens(self.vision, rows["pixel_values"].to(device), self.cfg.vision_feature_layer,
                               self.cfg.vision_feature_select_strategy)
        loss = self.engine(patches, rows["input_ids"].to(device), rows["attention_mask"].to(device),
                           valid=rows["valid"].to(device))
        if self.group.sum([float(not torch.isfinite(loss.detach()))])[0]:
            raise NonFiniteLoss(f"non-finite loss at step {self.step + 1}; the last checkpoint is intact: lower lr")
        self.engine.backward(loss)
        self.engine.step()
        return loss.item(), int(rows["valid"].sum()), int(rows["attention_mask"][rows["valid"]].sum())

    def _train_step(self, batches) -> dict:
        lr = self.cfg.lr * self.scheduler.get_last_lr()[0] / self.scheduler.base_lrs[0]
        losses, samples, tokens = [], 0, 0
        for _ in range(self.accumulation):
            loss, n, t = self._micro_step(batches)
            losses.append(loss)
            samples, tokens = samples + n, tokens + t
        scale = clamp_logit_scale(self.engine.module.logit_scale, math.log(self.cfg.max_logit_scale))
        self.step += 1
        loss_sum, loss_n, samples, tokens, stop = self.group.sum(
            [sum(losses), len(losses), samples, tokens, float(self.stop_requested)])
        row = {"step": self.step, "epoch": self.stream.position.epoch, "loss": loss_sum / loss_n, "lr": lr,
               "tokens": int(tokens), "samples": int(samples), "scale": math.exp(scale)}
        self.metrics.record(row, loss_sum, loss_n)
        return {**row, "stop": bool(stop)}

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True
        log.warning("rank %d: %s received: saving a checkpoint after this step", self.group.rank,
                    signal.Signals(signum).name)

    # -- checkpoints, evaluation -------------------------------------------------------------------------
    def _write_tower(self, folder: Path) -> None:
        self.engine.module.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def _save(self) -> Path:
        state = {"step": self.step, "total_steps": self.total_steps, "precision": self.cfg.precision,
                 "position": vars(self.stream.position)}

        def extra(folder: Path) -> None:
            self._write_tower(folder / TOWER_DIR)
            (folder / RECIPE_FILE).write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

        folder = self.checkpoints.save(self.engine, self.step, state, extra)
        self.metrics.restart()
        return folder

    def _resume(self) -> None:
        folder = self.resume_from
        if folder is None:
            self.metrics.keep_until(0)
            return
        if folder.parent.resolve() == self.checkpoints.root.resolve():
            self.checkpoints.set_aside_newer(folder)
        state = self.checkpoints.load(self.engine, folder)
        self.step, self.start = state["step"], Position(**state["position"])
        self.metrics.keep_until(self.step)
        if self.group.is_main:
            tqdm.write(f"resumed from {folder}: step {self.step}, epoch {self.start.epoch}")

    def _record_retrieval(self, when: str) -> dict:
        """Held-out retrieval (with eval_data) measured now, printed, and kept in retrieval.json under `when`
        (so a resumed run still reports the accuracy before alignment); all of retrieval.json."""
        record = {}
        path = self.out / "retrieval.json"
        if self.eval_set is not None and self.group.is_main:
            result = retrieval_accuracy(self.engine.module, self.vision, self.eval_set, self.collator, self.cfg,
                                        self.group.device)
            tqdm.write(f"held-out retrieval {when}: image->caption top-1 {result['accuracy']:.1%} over "
                       f"{result['pairs']} pairs, {result['captions']} captions (chance {result['chance']:.1%})")
            record = json.loads(path.read_text()) if path.is_file() and when != "before" else {}
            record[when] = result
            path.write_text(json.dumps(record, indent=1))
        self.group.barrier()
        return record

    def run(self) -> dict:
        self._resume()
        cfg = self.cfg
        if self.group.is_main:
            tqdm.write(f"aligning {self.total_steps} steps of {cfg.global_batch_size} pairs ({self.group.world_size} "
                       f"process(es) x {cfg.micro_batch_size} x {self.accumulation} accumulation, "
                       f"{cfg.micro_batch_size * self.group.world_size} pairs per contrastive batch), {cfg.loss} loss, "
                       f"{cfg.precision}, on {self.group.device} ({self.group.backend}); "
                       f"{len(self.stream.dataset)} pairs")
        if self.step == 0:
            self._record_retrieval("before")
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="align", unit="step",
                   disable=None if self.group.is_main else True, dynamic_ncols=True)
        batches = self.stream.batches(self.start)
        self.metrics.restart()
        self.engine.train()
        row = {"stop": False}
        try:
            while self.step < self.total_steps and not row["stop"]:
                row = self._train_step(batches)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", scale=f"{row['scale']:.1f}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self.metrics.log(self.step, self.total_steps, row["epoch"], row["lr"])
                if self.step % cfg.save_every == 0 or self.step == self.total_steps or row["stop"]:
                    self._save()
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
        checkpoint = str(find_checkpoint(self.out)) if self.step else None
        if row["stop"]:
            if self.group.is_main:
                tqdm.write(f"stopped by signal at step {self.step}; run the same command again to resume")
            return {"steps": self.step, "stopped": True, "checkpoint": checkpoint}
        retrieval = self._record_retrieval("after")
        if self.group.is_main:
            self._write_tower(self.out / TOWER_DIR)
            tqdm.write(f"wrote {self.out / TOWER_DIR} (`ppllava convert --text-tower` with an InternVL base)")
        self.group.barrier()
        return {"steps": self.step, "stopped": False, "text_tower": str(self.out / TOWER_DIR), **retrieval,
                "checkpoint": checkpoint}

    def close(self, clean: bool = True) -> None:
        close_engine(getattr(self, "engine", None), clean)


def preflight(cfg: AlignConfig) -> None:
    """The checks that need no process group: the inputs exist and are of the kinds align reads."""
    for role, path, kinds in (("vision", cfg.vision, ("internvl",)), ("text", cfg.text, ("clip", "clip_text_model"))):
        config = Path(path) / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{role} {path}: no config.json (expected a local Hugging Face model folder)")
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type not in kinds:
            raise ValueError(f"{role} {path} is a {model_type!r} model; expected {' or '.join(map(repr, kinds))}")
    for role, path in (("data", cfg.data), ("eval_data", cfg.eval_data)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{role} {path} does not exist")


def align(cfg: AlignConfig) -> dict:
    preflight(cfg)
    return run_closing(lambda: Aligner(cfg))

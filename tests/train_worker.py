"""Run by test_train.py under torchrun: train a recipe, then save the engine's logits on a fixed batch.

    python -m torch.distributed.run ... tests/train_worker.py RECIPE OUT.pt key=value ...

The batch is samples 0 (a video) and the last one (an image) of the training set, collated as in
training; OUT.pt holds it and the logits the DeepSpeed engine computed on it (eval mode, no grad).
"""

import sys

import torch

from ppllava.train import load_train_config
from ppllava.train.trainer import Trainer

cfg = load_train_config(sys.argv[1], sys.argv[3:])
trainer = Trainer(cfg)
try:
    trainer.run()
    dataset = trainer.stream.dataset
    batch = trainer.stream.loader.collate_fn([dataset[0], dataset[len(dataset) - 1]])
    batch.pop("skipped")
    trainer.engine.eval()
    with torch.no_grad():
        logits = trainer.engine(**{k: v.to(trainer.group.device) for k, v in batch.items()}).logits
    if trainer.group.is_main:
        torch.save({"batch": batch, "logits": logits.float().cpu()}, sys.argv[2])
finally:
    trainer.close()

"""Training on the DeepSpeed engine: the recipe, the loop, checkpoints and their export.

    config            TrainConfig: the recipe (configs/train/*.yaml) and key=value overrides
    deepspeed_config  configs/deepspeed/*.yaml completed with the recipe's batch sizes and precision
    distributed       the process group from torchrun's environment (or a group of one)
    optim             AdamW over the trainable parameter groups; warmup + cosine schedule
    stream            the resumable stream of micro-batches (sampler position, epochs)
    checkpoint        atomic checkpoints, keep-last-N, resume
    trainer           the loop: accumulation, logging, non-finite losses, signals
    export            ZeRO shards -> one Hugging Face safetensors folder
"""

from .config import TrainConfig, load_train_config
from .export import export_checkpoint
from .trainer import NonFiniteLoss, train

__all__ = ["TrainConfig", "load_train_config", "train", "NonFiniteLoss", "export_checkpoint"]

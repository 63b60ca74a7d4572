"""`ppllava export`: a training checkpoint (ZeRO-2 or ZeRO-3 shards) -> one Hugging Face folder.

The shards are consolidated on the CPU by DeepSpeed's zero_to_fp32 (trainable parameters from the
fp32 master copies, frozen ones as the engine held them); the result is cast to the precision the
run trained in (or `dtype`) and written with the checkpoint's config and tokenizers. The folder
loads with ppllava.model.load_model on any device: train on one machine, serve on another.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from backends.device import dtype_from_name

from ..model.checkpoint import PROMPT_TOKENIZER_DIR, load_tokenizers, read_config, save_weights
from ..processing import write_processor_config
from .checkpoint import find_checkpoint, read_state

log = logging.getLogger(__name__)

def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: str | torch.dtype | None = None) -> Path:
    """Consolidate `checkpoint` (a step- folder, or a run's output_dir: its newest) into `out`."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = find_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not an empty folder; choose a new one")
    state = read_state(folder)
    if dtype is None:
        dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[state["precision"]]
    dtype = dtype if isinstance(dtype, torch.dtype) else dtype_from_name(dtype)
    config = read_config(folder)
    weights = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.partial-") as tmp:
        save_weights(config, weights, tmp, dtype, f"checkpoint {folder}")
        tokenizer, prompt_tokenizer = load_tokenizers(folder)
        tokenizer.save_pretrained(tmp)
        prompt_tokenizer.save_pretrained(Path(tmp) / PROMPT_TOKENIZER_DIR)
        write_processor_config(tmp)                      # AutoProcessor.from_pretrained finds PPLLaVAProcessor
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)                              # the folder appears complete or not at all
    log.info("exported %s (step %d) to %s as %s", folder, state["step"], out, dtype)
    return out

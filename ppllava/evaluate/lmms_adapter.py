"""PPLLaVA as an lmms-eval model, for lmms-eval's task suite (video QA tasks use generate_until).

    pip install -e ".[lmms]"                  # lmms-eval is optional; nothing else in ppllava needs it
    python -m lmms_eval --model ppllava --model_args model=models/lv7b,frames=32 \
        --tasks mvbench,videomme --batch_size 1 --output_path logs/

Adapter holds the logic and needs no lmms-eval (the tests use it alone); lmms_model.py makes it an
lmms subclass, which lmms-eval finds through the `lmms_eval.models` entry point of this package.
Under torchrun / accelerate every process loads the model on its own device; lmms-eval splits the
requests by `rank` and `world_size`.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from backends.device import current_device_type, local_device, resolve_device, set_current_device

from ..data.sampling import sample_indices
from ..infer import Pipeline


class Adapter:
    """generate_until over lmms-eval requests: args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)."""

    def __init__(self, model: str, device: str = "auto", dtype: str | None = None, frames: int | str | None = None,
                 max_new_tokens: int | str = 128, **_ignored):
        super().__init__()
        if device in (None, "auto") and "LOCAL_RANK" in os.environ:       # one device per process
            device = local_device(current_device_type(), int(os.environ["LOCAL_RANK"]))
        device = resolve_device(device)
        set_current_device(device)
        self.pipeline = Pipeline.load(model, device=device, dtype=dtype, frames=None if frames is None else int(frames))
        self.frames, self.max_new_tokens = self.pipeline.frames, int(max_new_tokens)
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))

    @property
    def device(self):
        return self.pipeline.device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def _visual(self, visuals):
        """A request's visual: a video path (the first), or images (PIL / arrays): one is an image, several
        are a video's frames (sampled down to `frames` at segment centres)."""
        if not visuals:
            return None
        if isinstance(visuals[0], (str, os.PathLike)):
            return self.pipeline.read(visuals[0])
        arrays = [np.asarray(v.convert("RGB") if hasattr(v, "convert") else v) for v in visuals]
        frames = torch.from_numpy(np.stack([a for a in arrays for a in (a if a.ndim == 4 else a[None])]))
        if len(frames) > 1:
            frames = frames[sample_indices(len(frames), self.frames, train=False)]
        return self.pipeline.from_frames(frames.to(torch.uint8).contiguous(), is_video=len(frames) > 1)

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visual = self._visual(doc_to_visual(self.task_dict[task][split][doc_id]))
            tokens = int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))
            text = self.pipeline.ask(visual, context, max_new_tokens=tokens).text
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            out.append(text)
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("the PPLLaVA adapter answers generate_until tasks (the video QA suites); "
                                  "loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the PPLLaVA adapter does not support multi-round lmms-eval tasks")

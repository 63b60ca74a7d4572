"""PPLLaVA as an lmms-eval model, for lmms-eval's task suite (video QA tasks use generate_until).

    pip install -e ".[lmms]"                  # lmms-eval is optional; nothing else in ppllava needs it
    python -m lmms_eval --model ppllava --model_args model=models/lv7b,frames=32 \
        --tasks mvbench,videomme --batch_size 1 --output_path logs/

Adapter holds the logic and needs no lmms-eval (the tests use it alone); lmms_model.py makes it an
lmms subclass, which lmms-eval finds through the `lmms_eval.models` entry point of this package.
Under torchrun / accelerate every process loads the model on its own device; lmms-eval splits the
requests by `rank` and `world_size`.

What it does as `ppllava eval` does: a request whose video (or frame) cannot be read, or that fails on the
device, is answered "" (counted as wrong by the task's metric), named in a warning, and the run goes on; the
end of generate_until lists them all. `--batch_size N` (or auto:N): N requests at a time go through the LLM
together (Pipeline.generate_batch: each prefilled alone, decoded together, each row stopping on its own), the greedy answers of batch
size 1 token for token; a batch that fails is answered again one request at a time, so that an error names
its request. `auto` (lmms-eval's memory probe) is not measured here: batches of 1, said once in the log.
lmms-eval itself exits 0 after a failed evaluation:
`python -m ppllava.evaluate.lmms_run` runs the same command and exits 1 then (lmms_run.py).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from backends.device import current_device_type, local_device, resolve_device, set_current_device

from ..data import DataError, read_image
from ..data.readers import IMAGE_SUFFIXES
from ..data.sampling import sample_indices
from ..infer import Pipeline

log = logging.getLogger(__name__)

# what `ppllava eval` counts as a wrong answer and goes on after (ppllava/evaluate/runner.py)
FAILURES = (DataError, FileNotFoundError, RuntimeError)


def parse_batch_size(value) -> int | str:
    """lmms-eval's --batch_size: N (int or str), "auto" or "auto:N"; returns the int, or the auto string."""
    if value is None:
        return 1
    text = str(value).strip()
    if text.startswith("auto"):
        return text
    try:
        size = int(text)
    except ValueError:
        raise ValueError(f"batch_size must be N, auto or auto:N, got {value!r}") from None
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    return size


class Adapter:
    """generate_until over lmms-eval requests: args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)."""

    def __init__(self, model: str, device: str = "auto", dtype: str | None = None, frames: int | str | None = None,
                 max_new_tokens: int | str = 128, batch_size: int | str | None = 1, **_ignored):
        super().__init__()
        self.batch_size = parse_batch_size(batch_size)
        self.failures: list[tuple[str, str]] = []        # (what, why) of each request answered "" for an error
        if device in (None, "auto") and "LOCAL_RANK" in os.environ:       # one device per process
            device = local_device(current_device_type(), int(os.environ["LOCAL_RANK"]))
        device = resolve_device(device)
        set_current_device(device)
        self.pipeline = Pipeline.load(model, device=device, dtype=dtype, frames=None if frames is None else int(frames))
        self.frames, self.max_new_tokens = self.pipeline.frames, int(max_new_tokens)
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        if self.batch_size == "auto":
            self._warn("ppllava: batch_size auto: the memory probe is not run here, requests go in batches of 1 "
                       "(give --batch_size N for N at a time)")
        self.chunk = 1 if self.batch_size == "auto" else int(str(self.batch_size).removeprefix("auto:"))

    def _warn(self, message: str) -> None:
        """A line for the user (lmms_model.py sends it to lmms-eval's own log)."""
        log.warning(message)

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
            paths = [os.fspath(v) for v in visuals]
            if len(paths) == 1 or not all(p.lower().endswith(IMAGE_SUFFIXES) for p in paths):
                return self.pipeline.read(paths[0])              # a video, a folder of frames or one image
            picked = sample_indices(len(paths), self.frames, train=False)      # a video's frames, as files
            frames = torch.cat([read_image(paths[i]) for i in picked])
            return self.pipeline.from_frames(frames, is_video=True, name=paths[0])
        arrays = [np.asarray(v.convert("RGB") if hasattr(v, "convert") else v) for v in visuals]
        frames = torch.from_numpy(np.stack([a for a in arrays for a in (a if a.ndim == 4 else a[None])]))
        if len(frames) > 1:
            frames = frames[sample_indices(len(frames), self.frames, train=False)]
        return self.pipeline.from_frames(frames.to(torch.uint8).contiguous(), is_video=len(frames) > 1)

    def generate_until(self, requests) -> list[str]:
        """One answer per request, in their order, `batch_size` requests through the LLM at a time."""
        out, failed = [None] * len(requests), []

        def fail(i, error):
            _, _, _, doc_id, task, _ = requests[i].args
            what, why = f"{task} doc {doc_id}", f"{type(error).__name__}: {error}".splitlines()[0]
            self._warn(f"ppllava: {what}: {why}; answered \"\" (counted as wrong), the run goes on")
            failed.append((what, why))
            out[i] = ""

        for start in range(0, len(requests), self.chunk):
            ready = []                                      # (index, visual, context, gen_kwargs) read without error
            for i in range(start, min(start + self.chunk, len(requests))):
                context, gen_kwargs, doc_to_visual, doc_id, task, split = requests[i].args
                try:
                    ready.append((i, self._visual(doc_to_visual(self.task_dict[task][split][doc_id])), context,
                                  gen_kwargs))
                except FAILURES as error:
                    fail(i, error)
            for tokens in dict.fromkeys(self._tokens(g) for *_, g in ready):     # rows of one length limit together
                rows = [r for r in ready if self._tokens(r[3]) == tokens]
                try:
                    answers = self.pipeline.ask_batch([(v, c) for _, v, c, _ in rows], max_new_tokens=tokens)
                except FAILURES:
                    answers = None                          # answered again one at a time: each error names its row
                for k, (i, visual, context, gen_kwargs) in enumerate(rows):
                    try:
                        text = answers[k].text if answers is not None else \
                            self.pipeline.ask(visual, context, max_new_tokens=tokens).text
                        out[i] = self._cut(text, gen_kwargs)
                    except FAILURES as error:
                        fail(i, error)
        if failed:
            self._warn(f"ppllava: {len(failed)} of {len(requests)} requests failed and count as wrong: "
                       + "; ".join(f"{what} ({why})" for what, why in failed))
        self.failures += failed
        return out

    def _tokens(self, gen_kwargs: dict) -> int:
        return int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))

    @staticmethod
    def _cut(text: str, gen_kwargs: dict) -> str:
        """The answer up to the first of the task's `until` strings."""
        until = gen_kwargs.get("until") or []
        for stop in [until] if isinstance(until, str) else until:
            if stop and stop in text:
                text = text.split(stop)[0]
        return text

    def loglikelihood(self, requests):
        raise NotImplementedError("the PPLLaVA adapter answers generate_until tasks (the video QA suites); "
                                  "loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the PPLLaVA adapter does not support multi-round lmms-eval tasks")

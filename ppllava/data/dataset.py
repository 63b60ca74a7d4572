"""The instruction-tuning dataset: samples -> frames, pixel_values, input_ids, labels, pooling prompt.

Images, multi-image and video samples of every configured dataset live in one index, so a shuffled
sampler interleaves them within a batch. Videos are sampled per their dataset's `frames` (training:
a random position in each of N equal segments, reproducible from (seed, epoch, index); evaluation:
segment centres); an image is one frame, or, for a model with image_grid_pinpoints, LLaVA-NeXT's anyres crops
with its image size, as inference cuts it (processing.MediaInputs: the crops, the placeholder run and the size
come from the same code).

Unreadable samples are never replaced: with strict=False (training) __getitem__ returns a Skipped
record that the collator passes on for counting (see loader.SkipMonitor); with strict=True
(inference, evaluation) it raises the UnreadableSample / TooLong error, which names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..conversation import pooling_prompt
from .chat import ChatEncoder, TooLong
from .errors import UnreadableSample
from .readers import FrameFolderReader, get_reader, read_image
from .sampling import frame_window, read_clip
from .sources import DataConfig, Media, Sample


@dataclass(frozen=True)
class Item:
    """One encoded sample: what the collator batches."""
    input_ids: torch.Tensor           # (L,)
    labels: torch.Tensor              # (L,)
    pixel_values: torch.Tensor | None  # (F, 3, S, S) for all its media, or None
    frames: tuple[int, ...]           # frames per medium (an anyres image: its crops)
    is_video: tuple[bool, ...]
    prompt: str                       # the prompt tower's text
    paths: tuple[str, ...]
    image_sizes: tuple[tuple[int, int] | None, ...] = ()   # (H, W) per medium of anyres images, None for the others


@dataclass(frozen=True)
class Skipped:
    index: int
    path: str
    reason: str


class ConversationDataset(Dataset):
    def __init__(self, samples: list[Sample], data: DataConfig, model_config, encoder: ChatEncoder,
                 train: bool = True, strict: bool | None = None, seed: int = 0):
        self.samples, self.data, self.config, self.encoder = samples, data, model_config, encoder
        from ..processing import MediaInputs          # not at import: ppllava.processing imports ppllava.data

        self.media = MediaInputs(model_config)      # what inference reads of each medium
        self.preprocess = self.media.preprocess
        with_video = {s.dataset for s in samples if any(m.kind == "video" for m in s.media)}
        self.readers = [get_reader(spec.reader) if d in with_video else None     # a missing library fails here
                        for d, spec in enumerate(data.datasets)]
        self.train, self.strict, self.seed, self.epoch = train, (not train) if strict is None else strict, seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """New random frame offsets each epoch (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def _generator(self, index: int) -> torch.Generator | None:
        if not self.train:
            return None
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF)

    def load_media(self, sample: Sample, generator=None) -> list[torch.Tensor]:
        """uint8 (T, H, W, 3) frames of each medium of `sample`."""
        out = []
        for media in sample.media:
            if media.kind == "image":
                out.append(read_image(media.path))
                continue
            spec = self.data.datasets[sample.dataset]
            reader = FrameFolderReader(spec.fps) if os.path.isdir(media.path) else self.readers[sample.dataset]
            with reader.open(media.path) as clip:
                window = (frame_window(clip.num_frames, clip.fps, *media.window, path=media.path)
                          if media.window != (None, None) else None)
                out.append(read_clip(clip, spec.frames, self.train, generator, window)[0])
        return out

    def encode(self, sample: Sample, clips: list[torch.Tensor]) -> Item:
        media = [(c, m.kind == "video") for c, m in zip(clips, sample.media)]
        read = [self.media.medium(c, v) for c, v in media]          # (frames or crops, is_video, image size)
        enc = self.encoder.encode_fitting(sample.messages, self.media.runs(media), self.data.max_length)
        pixels = torch.cat([self.media.pixels(c, v) for c, v in media]) if media else None
        return Item(enc.input_ids, enc.labels, pixels, tuple(n for n, _, _ in read), tuple(v for _, v, _ in read),
                    pooling_prompt(list(enc.messages)), tuple(m.path for m in sample.media),
                    tuple(size for _, _, size in read))

    def __getitem__(self, index: int) -> Item | Skipped:
        sample = self.samples[index]
        try:
            return self.encode(sample, self.load_media(sample, self._generator(index)))
        except UnreadableSample as e:
            if self.strict:
                raise
            return Skipped(index, e.path, e.reason)
        except TooLong as e:
            if self.strict:
                raise
            return Skipped(index, ", ".join(m.path for m in sample.media) or f"record {sample.record + 1}", str(e))

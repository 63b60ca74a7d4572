"""Image-text pairs for `ppllava align`: a list file or a folder of tar shards, read without extra libraries.

    list.jsonl   one {"image": PATH, "caption": TEXT} a line
    list.tsv     one PATH<TAB>CAPTION a line
    shards/      *.tar files in webdataset's layout: KEY.jpg (or another of readers.IMAGE_SUFFIXES) beside KEY.txt

Relative image paths are taken from the list file's folder. A tar shard is indexed once (member names,
offsets and sizes, with the stdlib tarfile); its images and captions are then read by offset. A pair whose
image cannot be decoded is never replaced: the dataset returns a `Skipped` record, which the stream
counts against max_skip_fraction like the chat data's.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..data import DataError, Skipped, UnreadableSample
from ..data.readers import IMAGE_SUFFIXES, rgb_pixels



@dataclass(frozen=True)
class Member:
    """Bytes [offset, offset + size) of one file inside a tar shard."""
    shard: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


@dataclass(frozen=True)
class Pair:
    image: str | Member           # a file path, or a member of a tar shard
    caption: str | Member


def _index_shard(path: Path) -> list[Pair]:
    images, captions = {}, {}
    try:
        with tarfile.open(path, "r:") as tar:        # uncompressed: members are read by byte offset
            for info in tar:
                if not info.isfile():
                    continue
                key, dot, suffix = info.name.rpartition(".")
                member = Member(str(path), info.offset_data, info.size)
                if "." + suffix.lower() in IMAGE_SUFFIXES and dot:
                    images[key] = member
                elif suffix.lower() == "txt" and dot:
                    captions[key] = member
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: not a readable tar shard ({e})") from None
    return [Pair(images[k], captions[k]) for k in sorted(images) if k in captions]


def _read_list(path: Path) -> list[Pair]:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
                image, caption = record["image"], record["caption"]
                if not (isinstance(image, str) and isinstance(caption, str)):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{number}: expected a JSON object with 'image' and 'caption' strings") from None
        else:
            image, tab, caption = line.partition("\t")
            if not tab:
                raise DataError(f"{path}:{number}: expected IMAGE<TAB>CAPTION")
        pairs.append(Pair(str(path.parent / image), str(caption)))
    return pairs


def load_pairs(source: str | Path) -> list[Pair]:
    """Every pair of a .jsonl / .tsv list or a folder of .tar shards, in a fixed order."""
    path = Path(source)
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if not shards:
            raise DataError(f"{path}: a folder of pairs must hold .tar shards (KEY.jpg + KEY.txt members)")
        pairs = [p for shard in shards for p in _index_shard(shard)]
    elif path.is_file() and path.suffix in (".jsonl", ".tsv"):
        pairs = _read_list(path)
    elif path.exists():
        raise DataError(f"{path}: image-text pairs come as a .jsonl or .tsv list or a folder of .tar shards")
    else:
        raise FileNotFoundError(f"image-text pairs {path} do not exist")
    if not pairs:
        raise DataError(f"{path}: no image-text pairs found")
    return pairs


def _decode(data: bytes, where: str) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return torch.from_numpy(rgb_pixels(image, where))
    except UnreadableSample:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise UnreadableSample(where, f"Pillow cannot read it: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _where(item) -> str:
    return f"{item.shard}@{item.offset}" if isinstance(item, Member) else item


class PairDataset(Dataset):
    """pair i -> {"pixel_values": (3, S, S), "caption": str}, or Skipped when the image cannot be read."""

    def __init__(self, pairs: list[Pair], preprocessor):
        self.pairs, self.preprocess = pairs, preprocessor

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:   # the stream calls this; pairs need no per-epoch randomness
        pass

    def __getitem__(self, index: int) -> dict | Skipped:
        pair = self.pairs[index]
        try:
            if isinstance(pair.image, Member):
                image = _decode(pair.image.read(), _where(pair.image))
            else:
                try:
                    data = Path(pair.image).read_bytes()
                except OSError as e:
                    raise UnreadableSample(pair.image, e.strerror or "cannot be read") from None
                image = _decode(data, pair.image)
            caption = pair.caption.read().decode("utf-8", "replace") if isinstance(pair.caption, Member) else pair.caption
        except UnreadableSample as e:
            return Skipped(index, e.path, e.reason)
        if not caption.strip():
            return Skipped(index, _where(pair.image), "empty caption")
        return {"pixel_values": self.preprocess(image[None])[0], "caption": caption.strip()}


class PairCollator:
    """Stack the images, tokenize the captions (truncated to the text tower's positions, padded to the longest)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, batch: list) -> dict:
        out: dict = {"skipped": [b for b in batch if isinstance(b, Skipped)]}
        items = [b for b in batch if not isinstance(b, Skipped)]
        if items:
            text = self.tokenizer([b["caption"] for b in items], padding="longest", truncation=True,
                                  max_length=self.max_length, return_tensors="pt")
            out.update(pixel_values=torch.stack([b["pixel_values"] for b in items]), input_ids=text["input_ids"],
                       attention_mask=text["attention_mask"])
        return out

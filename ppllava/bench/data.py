"""`ppllava bench data`: frames decoded and preprocessed per second, per reader and DataLoader workers.

Each measured item is what training does for one video: open it, sample N frames (segment centres),
decode them and preprocess them to the tower's input (resize, crop, normalise). The clips are made
here (H.264 via PyAV, a moving pattern) unless --videos points at a folder of real ones; a
"frames" entry reads the same clips from folders of extracted JPEG frames.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessor
from ..data.readers import FrameFolderReader, available_readers, get_reader
from ..data.sampling import read_clip

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def pattern(index: int, height: int, width: int) -> torch.Tensor:
    """A frame of moving diagonal bands: uint8 (H, W, 3), different every frame, compressible like video."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    base = (x + y + 4 * index) % 256
    return torch.stack([base, (2 * x + index) % 256, (3 * y - index) % 256], dim=-1).to(torch.uint8)


def write_clips(folder: Path, clips: int, frames: int, height: int, width: int, fps: int = 30) -> list[Path]:
    """Write `clips` H.264 mp4 files and, beside each, a folder of its frames as JPEGs."""
    import av
    from PIL import Image

    paths = []
    for c in range(clips):
        path = folder / f"clip{c}.mp4"
        stills = folder / f"clip{c}_frames"
        stills.mkdir()
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(frames):
                image = pattern(i + 7 * c, height, width).numpy()
                Image.fromarray(image).save(stills / f"{i:05d}.jpg", quality=90)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        paths.append(path)
    return paths


class DecodeItems(Dataset):
    """One item = one clip opened, N frames sampled, decoded and preprocessed."""

    def __init__(self, paths, reader, frames: int, preprocess: Preprocessor):
        self.paths, self.reader, self.frames, self.preprocess = list(paths), reader, frames, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with self.reader.open(self.paths[i]) as clip:
            frames, _ = read_clip(clip, self.frames, train=False)
        return self.preprocess(frames)


def _first(batch):
    return batch[0]


def frames_per_second(items: DecodeItems, workers: int, passes: int) -> float:
    """Frames through decode + preprocess per second over `passes` passes (worker start-up included once)."""
    loader = DataLoader(items, batch_size=1, num_workers=workers, collate_fn=_first,
                        persistent_workers=workers > 0)
    for _ in loader:                                   # warm-up pass: worker start, codec init, page cache
        pass
    start, count = time.perf_counter(), 0
    for _ in range(passes):
        for pixels in loader:
            count += pixels.shape[0]
    return count / (time.perf_counter() - start)


def bench_data(readers=None, workers=(0, 1, 2), clips=8, clip_frames=96, frames=32, height=240, width=320,
               size=336, passes=2, videos=None, progress=None) -> dict:
    preprocess = Preprocessor(size, True, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    usable = available_readers()
    readers = list(readers) if readers else usable + ["frames"]
    report = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "frames_per_clip": frames,
              "size": size, "passes": passes, "results": []}
    with tempfile.TemporaryDirectory(prefix="ppllava-bench-data-") as tmp:
        if videos:
            paths = sorted(p for p in Path(videos).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not paths:
                raise ValueError(f"--videos {videos}: no {'/'.join(VIDEO_SUFFIXES)} files in it")
            report["videos"] = str(videos)
        else:
            paths = write_clips(Path(tmp), clips, clip_frames, height, width)
            report["videos"] = f"{clips} generated H.264 clips, {clip_frames} frames of {width}x{height}"
        for name in readers:
            if name == "frames":
                if videos:
                    continue                         # real videos come without extracted frames
                reader, sources = FrameFolderReader(), [p.with_name(p.stem + "_frames") for p in paths]
            elif name not in usable:
                report["results"].append({"reader": name, "unavailable": True})
                continue
            else:
                reader, sources = get_reader(name), paths
            items = DecodeItems(sources, reader, frames, preprocess)
            for w in workers:
                if progress:
                    progress(f"{name}, {w} worker(s)")
                fps = frames_per_second(items, w, passes)
                report["results"].append({"reader": name, "workers": w, "frames_per_s": round(fps, 1)})
    return report


def format_report(report: dict) -> str:
    lines = [f"decode + preprocess ({report['frames_per_clip']} frames a clip to {report['size']}px) of "
             f"{report['videos']}; {report['cpus']} CPUs", f"{'reader':<12}{'workers':>8}{'frames/s':>12}"]
    for r in report["results"]:
        if r.get("unavailable"):
            lines.append(f"{r['reader']:<12}{'-':>8}{'not installed':>14}")
        else:
            lines.append(f"{r['reader']:<12}{r['workers']:>8}{r['frames_per_s']:>12.1f}")
    return "\n".join(lines)

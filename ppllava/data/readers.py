"""Media readers behind one interface: `reader.open(path)` gives a Clip, `clip.read(indices)` its frames.

    name          reader             library                     frame i is
    "decord"      DecordReader       decord (x86-64 wheels only) the i-th of its packet index, by time
    "pyav"        PyAVReader         av (bundles FFmpeg)         the i-th frame decoded from the start
    "torchcodec"  TorchCodecReader   torchcodec (system FFmpeg)  the i-th of its exact-mode scan
    "frames"      FrameFolderReader  Pillow                      the i-th image of a folder, natural order

The three video libraries all decode with FFmpeg: on sound MP4 and Matroska files they agree on the
frame count and give identical frames (MPEG-TS is the exception: decord and torchcodec fail on or
misplace the frames of our test .ts files; read .ts with "pyav"). `Clip.read` returns uint8
(T, H, W, 3) RGB in the order asked, repeats included, or raises: never fewer frames than asked,
never another frame (or a black one) in place of one it could not decode. Every problem with the
media is an UnreadableSample (a DataError) naming the path; a reader whose library is missing
raises ReaderUnavailable (a DataError and an ImportError) saying what to pip install.

    file                           we raise UnreadableSample
    missing / a folder / 0 bytes   at open, before any library sees it
    not a video (text named .mp4)  at open (each library fails to open it)
    no video stream (audio only)   at open
    zero frames                    at open (libraries fail to open it; a count of 0 is also refused)
    truncated MP4/MOV, MKV/WebM,   at open: the container's own length fields (top-level MP4 boxes,
      AVI (cut short)                the Matroska segment, the RIFF chunk) exceed the file's size
    index out of range             at read
    frame that does not decode     at read (decoder error, or PyAV's stream ending early)

Why truncation is checked by hand (decord 0.6.0, PyAV 18.1, torchcodec 0.13; 40-frame H.264 files
with B-frames cut at, next to and inside every packet): a file cut short loses the packets at its end, and in decode order those
include B-frames shown *before* frames that survive.
  - moov at the end (the default mp4): the index is lost, all three libraries fail to open it.
  - moov first (faststart): decord fails at open when the cut splits a packet (it reads every packet
    to index them) but at a packet boundary opens with only the surviving frames (e.g. 3 of 40) and
    returns frame 4 as index 2; PyAV opens with the index's 40 frames, its decoder raises at a split
    packet or just stops early, and skips the lost B-frames in between (index 2 is frame 4 again);
    torchcodec counts the surviving packets, raises RuntimeError for some frames and returns shifted
    frames for others.
  - Matroska: all three open with the surviving frames and silently return shifted ones.
None of them crashed or hung on cut or corrupted files. Formats without a length field (MPEG-TS,
FLV) cannot be checked this way: cut short, they too can give shifted frames near the cut (PyAV at
least raises when its stream ends before a frame asked for). Data corrupted (not cut) inside the
stream is concealed by FFmpeg's decoder and goes unnoticed by every reader.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import operator
import os
import re
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch

from .errors import DataError, UnreadableSample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")   # images, and frames in a folder


log = logging.getLogger(__name__)


class ReaderUnavailable(DataError, ImportError):
    """A reader whose library is not installed, or installed but does not load: says what to install."""


class CannotOpen(UnreadableSample):
    """A file that passed the checks every reader shares, which this reader's library cannot open (or cannot
    decode at all: its first read fails): reader "auto" tries the next reader for it."""


@contextlib.contextmanager
def _quiet(noise: list):
    """Collect what native libraries (decord, FFmpeg inside torchcodec and decord) print to file descriptor 2,
    so that a bad file gives our one line and not theirs; the lines go to `noise`, cleaned of their
    "[time] /src/file.cc:83: " and "[mov,mp4 @ 0x...] " prefixes. (Python's own writes to sys.stderr from
    another thread while this runs land there too; the readers run in the main thread or a worker process.)"""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                line = re.sub(r"^(\[[\d:]+\] \S+:\d+: |\[[^\]]* @ 0x[0-9a-f]+\] )+", "", line.strip())
                if line:
                    noise.append(line)
            if noise:
                log.debug("library output: %s", " | ".join(noise))


def _with_noise(message: str, noise: list) -> str:
    """Our message, with what the library printed (its own reason, often clearer than its exception) after it."""
    said = "; ".join(dict.fromkeys(n for n in noise if n not in message))
    return f"{message} ({said[:300]})" if said else message


def _one_line(error: BaseException) -> str:
    """An exception's message on one line, without the source locations decord ("[12:00:00]
    /src/file.cc:61: ") and torchcodec ("SingleStreamDecoder, /src/file.cpp:52, ") put first."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return re.sub(r"^(\[[\d:]+\] \S+:\d+: |\w+, \S+:\d+, )+", "", text)


def _checked_file(path) -> str:
    """`path` as a str, after checking it is a non-empty regular file whose container is not cut short
    (before any decoder sees it)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UnreadableSample(path, "no such file")
    if not os.path.isfile(path):
        raise UnreadableSample(path, "not a regular file (a folder of frames needs reader 'frames')")
    size = os.path.getsize(path)
    if size == 0:
        raise UnreadableSample(path, "empty file (0 bytes)")
    with open(path, "rb") as file:
        declared = _declared_size(file, size)
    if declared is not None and declared > size:
        raise UnreadableSample(path, f"truncated: its container declares {declared} bytes, the file has {size}")
    return path


# The top-level box types an MP4/MOV file can start with.
_MP4_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"uuid", b"moof", b"sidx"}


def _declared_size(file, size: int) -> int | None:
    """Bytes the container's own length fields account for (MP4/MOV, Matroska/WebM, RIFF/AVI), or
    None for other formats and for lengths left open (a Matroska segment of unknown size)."""
    head = file.read(16)
    if head[4:8] in _MP4_BOXES:
        return _mp4_size(file, size)
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return _matroska_size(file)
    if head[:4] == b"RIFF" and len(head) >= 8:
        return 8 + int.from_bytes(head[4:8], "little")
    return None


def _mp4_size(file, size: int) -> int | None:
    """End of the last top-level box: each box starts with its size (32-bit, or 1 then 64-bit)."""
    offset = 0
    while offset < size:
        file.seek(offset)
        header = file.read(16)
        if len(header) < 8:
            return offset + 8
        box = int.from_bytes(header[:4], "big")
        if not all(32 <= c < 127 for c in header[4:8]):
            return None                     # not a box (trailing bytes?): leave the rest to the decoder
        if box == 1:
            if len(header) < 16:
                return offset + 16
            box = int.from_bytes(header[8:16], "big")
        elif box == 0:                      # the last box, to the end of the file
            return None
        if box < 8:
            return None
        offset += box
    return offset


def _ebml_number(file) -> tuple[int, bool] | None:
    """An EBML variable-length integer (value, whether all its value bits are 1 = unknown)."""
    first = file.read(1)
    if not first or first[0] == 0:
        return None
    length = 8 - first[0].bit_length() + 1
    rest = file.read(length - 1)
    if len(rest) < length - 1:
        return None
    value = int.from_bytes(bytes([first[0] & (0xFF >> length)]) + rest, "big")
    return value, value == (1 << (7 * length)) - 1


def _matroska_size(file) -> int | None:
    """End of the Segment that follows the EBML header, when its size is known."""
    file.seek(4)
    header = _ebml_number(file)
    if header is None:
        return None
    file.seek(file.tell() + header[0])
    if file.read(4) != b"\x18\x53\x80\x67":
        return None
    segment = _ebml_number(file)
    if segment is None or segment[1]:
        return None
    return file.tell() + segment[0]


def _natural_key(name: str):
    """Sort key that orders the digit runs of a name by value: frame_2 < frame_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class Clip(ABC):
    """An opened video: `num_frames`, `fps` (None when unknown) and `read(indices)`.

    `read` validates the indices and serves repeats and any order; subclasses only decode sorted,
    distinct, in-range indices (`_decode`). Use as a context manager to close the file.
    """

    path: str
    num_frames: int
    fps: float | None
    reader: str = "auto"    # the name of the reader whose library decodes it

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (len(indices), H, W, 3) RGB frames, in the order of `indices` (which may repeat)."""
        wanted = [operator.index(i) for i in indices]
        if not wanted:
            raise ValueError(f"{self.path}: read() needs at least one frame index")
        outside = [i for i in wanted if not 0 <= i < self.num_frames]
        if outside:
            raise UnreadableSample(self.path, f"frame {outside[0]} is out of range: "
                                              f"the video has {self.num_frames} frames")
        distinct = sorted(set(wanted))
        frames = self._decode(distinct)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[0] != len(distinct) or frames.shape[3] != 3:
            raise UnreadableSample(self.path, f"decoded {tuple(frames.shape)} {frames.dtype} "
                                              f"for {len(distinct)} frames")
        if distinct == wanted:
            return frames
        row = {index: r for r, index in enumerate(distinct)}
        return frames[[row[i] for i in wanted]]

    @abstractmethod
    def _decode(self, indices: list[int]) -> torch.Tensor:
        """uint8 (len(indices), H, W, 3) for sorted, distinct, in-range `indices`, or UnreadableSample."""

    def close(self) -> None:
        """Release the file (reading after close is an error)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, num_frames={self.num_frames}, fps={self.fps})"


@cache
def _import(module: str):
    """(module, None) or (None, the error importing it raised). torchcodec raises RuntimeError when it
    finds no FFmpeg libraries it can load; a broken native library can raise OSError."""
    try:
        return importlib.import_module(module), None
    except (ImportError, RuntimeError, OSError) as error:
        return None, error


class VideoReader(ABC):
    """Opens video files with one library. `name` is what configs and get_reader use."""

    name: str
    module: str          # imported lazily, the first time the reader is used
    install: str         # what to do when it is missing

    @classmethod
    def available(cls) -> bool:
        """Whether the library imports and loads here."""
        return _import(cls.module)[0] is not None

    @classmethod
    def library(cls):
        """The imported library module, or ReaderUnavailable."""
        module, error = _import(cls.module)
        if module is None:
            raise ReaderUnavailable(f"reader {cls.name!r} cannot load {cls.module} ({_one_line(error)}): {cls.install}")
        return module

    @abstractmethod
    def open(self, path) -> Clip:
        """The opened clip, or UnreadableSample."""


class DecordReader(VideoReader):
    """decord.VideoReader: indexes every packet when it opens, then seeks to the nearest keyframe."""

    name, module = "decord", "decord"
    install = "pip install decord (no wheel for aarch64: there use reader 'pyav', pip install av)"

    def __init__(self, num_threads: int = 0):
        self.num_threads = num_threads      # 0: decord's default (as many as the CPU has)

    def open(self, path) -> Clip:
        decord = self.library()
        return DecordClip(_checked_file(path), decord, self.num_threads)


class DecordClip(Clip):
    reader = "decord"

    # decord 0.6.0 raised (and logged to stderr) on every bad input we tried: cut, corrupted, text,
    # audio-only, zero-frame and image files, folders; none crashed or hung the process. Missing,
    # empty and cut-short files do not reach it anyway (_checked_file), which matters most for
    # the cut ones: at a packet boundary decord opens them and returns shifted frames.
    def __init__(self, path: str, decord, num_threads: int):
        self.path = path
        self._errors = (decord.DECORDError, RuntimeError)
        noise = []
        try:
            with _quiet(noise):
                self._video = decord.VideoReader(path, num_threads=num_threads)
                self.num_frames = len(self._video)
                fps = self._video.get_avg_fps()
        except self._errors as error:
            raise CannotOpen(path, _with_noise(f"decord cannot open it: {_one_line(error)}", noise)) from None
        if self.num_frames == 0:
            raise UnreadableSample(path, "the video stream has no frames")
        self.fps = float(fps) if fps and fps > 0 else None

    def _decode(self, indices: list[int]) -> torch.Tensor:
        if self._video is None:
            raise ValueError(f"{self.path}: the clip is closed")
        noise = []
        try:
            with _quiet(noise):
                return torch.from_numpy(self._video.get_batch(indices).asnumpy())
        except self._errors as error:
            raise UnreadableSample(self.path, _with_noise(f"decord cannot decode frames {indices[0]}..{indices[-1]}: "
                                                          f"{_one_line(error)}", noise)) from None

    def close(self) -> None:
        self._video = None                  # decord has no close: dropping the reader frees it


class PyAVReader(VideoReader):
    """PyAV: decodes from the start and keeps the frames asked for, which is exact however the file
    is cut into GOPs, and stops after the last one asked for. Reads in increasing order continue
    where the previous read stopped; an earlier frame restarts from the beginning."""

    name, module = "pyav", "av"
    install = "pip install av"

    def __init__(self, threads: bool = True):
        self.threads = threads              # FFmpeg's frame/slice threads: same frames, faster

    def open(self, path) -> Clip:
        av = self.library()
        return PyAVClip(_checked_file(path), av, self.threads and _frame_threads_safe(av))


def _frame_threads_safe(av) -> bool:
    """PyAV before 13 routes every FFmpeg log line through a callback that takes the GIL. Freeing a decoder
    whose frame threads are still decoding (a clip left mid-stream, freed by the garbage collector, which holds
    the GIL) then waits on a thread that waits for the GIL: the process hangs (seen in make test-av, PyAV
    12.0.0). Those versions decode with FFmpeg's default slice threads instead: the same frames."""
    return int(av.__version__.split(".")[0]) >= 13


class PyAVClip(Clip):
    reader = "pyav"

    def __init__(self, path: str, av, threads: bool):
        self.path, self._av, self._threads = path, av, threads
        self._container = self._frames = None
        self._next = 0                      # index of the frame self._frames yields next
        self._start()
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        # the container's index (mp4: every frame, from the moov); PyAV shows it from 17.0 only. Without it
        # (PyAV 12-16) a file cut short is still refused at open by _checked_file when its container has length
        # fields, and otherwise at the read of a frame past the cut: the frames read are the same
        entries = getattr(stream, "index_entries", None) or ()
        if len(entries) and entries[-1].pos + entries[-1].size > os.path.getsize(path):
            self.close()
            raise UnreadableSample(path, "truncated: the data of its last frame lies past the end of the file")
        self.num_frames = stream.frames if stream.frames > 0 else self._count_packets()
        if self.num_frames == 0:
            self.close()
            raise UnreadableSample(path, "the video stream has no frames")

    def _start(self) -> None:
        """(Re)open the file and position a frame iterator on frame 0."""
        self.close()
        try:
            self._container = self._av.open(self.path)
        except self._av.error.FFmpegError as error:
            raise CannotOpen(self.path, f"PyAV cannot open it: {_one_line(error)}") from None
        if not self._container.streams.video:
            self.close()
            raise UnreadableSample(self.path, "no video stream")
        stream = self._container.streams.video[0]
        if self._threads:
            stream.thread_type = "AUTO"
        self._frames, self._next = self._decoded(stream), 0

    def _decoded(self, stream):
        """The stream's frames in output order; a corrupt packet (data cut short) is an error."""
        for packet in self._container.demux(stream):
            if packet.is_corrupt:
                raise UnreadableSample(self.path, f"corrupt packet before frame {self._next} (file cut short?)")
            yield from packet.decode()      # the last, empty packet flushes the decoder

    def _count_packets(self) -> int:
        """Frames of a container that does not store the count (mkv, webm): its video packets."""
        stream = self._container.streams.video[0]
        try:
            count = sum(1 for packet in self._container.demux(stream) if packet.size)
        except self._av.error.FFmpegError as error:
            raise UnreadableSample(self.path, f"PyAV cannot read its packets: {_one_line(error)}") from None
        self._start()
        return count

    def _decode(self, indices: list[int]) -> torch.Tensor:
        if self._container is None:
            raise ValueError(f"{self.path}: the clip is closed")
        if self._frames is None or indices[0] < self._next:
            self._start()
        out, wanted = [], iter(indices)
        target = next(wanted)
        try:
            for frame in self._frames:
                index, self._next = self._next, self._next + 1
                if index == target:
                    out.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                    target = next(wanted, None)
                    if target is None:
                        return torch.stack(out)
            raise UnreadableSample(self.path, f"frame {target} asked for, but the stream ends after {self._next} of "
                                              f"its {self.num_frames} frames (cut short or corrupt)")
        except self._av.error.FFmpegError as error:
            self._frames = None             # the decoder is in an unknown state: restart next time
            raise UnreadableSample(self.path, f"cannot decode frame {self._next}: {_one_line(error)}") from None
        except UnreadableSample:
            self._frames = None
            raise

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._frames = None


class TorchCodecReader(VideoReader):
    """torchcodec.decoders.VideoDecoder in exact mode: scans the packets when it opens, like decord."""

    name, module = "torchcodec", "torchcodec.decoders"
    install = ("pip install torchcodec==0.13.0 (the CPU build; it needs FFmpeg 4-7 shared libraries, "
               "e.g. apt install ffmpeg)")

    def __init__(self, num_threads: int = 1):
        self.num_threads = num_threads      # 0: as many as the CPU has

    def open(self, path) -> Clip:
        decoders = self.library()
        return TorchCodecClip(_checked_file(path), decoders.VideoDecoder, self.num_threads)


class TorchCodecClip(Clip):
    reader = "torchcodec"

    _errors = (RuntimeError, ValueError, IndexError)

    def __init__(self, path: str, VideoDecoder, num_threads: int):
        self.path = path
        noise = []
        try:
            with _quiet(noise):
                self._decoder = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC",
                                             num_ffmpeg_threads=num_threads)
        except self._errors as error:
            raise CannotOpen(path, _with_noise(f"torchcodec cannot open it: {_one_line(error)}", noise)) from None
        metadata = self._decoder.metadata
        self.num_frames = len(self._decoder)
        if self.num_frames == 0:
            raise UnreadableSample(path, "the video stream has no frames")
        self.fps = float(metadata.average_fps) if metadata.average_fps else None

    def _decode(self, indices: list[int]) -> torch.Tensor:
        if self._decoder is None:
            raise ValueError(f"{self.path}: the clip is closed")
        noise = []
        try:
            with _quiet(noise):
                return self._decoder.get_frames_at(indices).data
        except self._errors as error:
            raise UnreadableSample(self.path, _with_noise(f"torchcodec cannot decode frames {indices[0]}..{indices[-1]}"
                                                          f": {_one_line(error)}", noise)) from None

    def close(self) -> None:
        self._decoder = None


class FrameFolderReader:
    """A folder of extracted frames (IMAGE_SUFFIXES: .jpg .jpeg .png .bmp .webp .tif .tiff), in natural order, decoded by Pillow.

    The folder has no frame rate of its own: give `fps` when a sample's start/end times need one.
    """

    name = "frames"

    def __init__(self, fps: float | None = None):
        self.fps = fps

    @classmethod
    def available(cls) -> bool:
        return True

    def open(self, path) -> Clip:
        return FrameFolder(os.fspath(path), self.fps)


class FrameFolder(Clip):
    reader = "frames"

    def __init__(self, path: str, fps: float | None):
        self.path, self.fps = path, fps
        if not os.path.exists(path):
            raise UnreadableSample(path, "no such folder")
        if not os.path.isdir(path):
            raise UnreadableSample(path, "not a folder of frames")
        names = [n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES)]
        self._files = [os.path.join(path, n) for n in sorted(names, key=_natural_key)]
        self.num_frames = len(self._files)
        if self.num_frames == 0:
            raise UnreadableSample(path, f"no frames: the folder has no {'/'.join(IMAGE_SUFFIXES)} images")

    def _decode(self, indices: list[int]) -> torch.Tensor:
        try:
            frames = [_load_image(self._files[i]) for i in indices]
        except UnreadableSample as error:     # name the sample (the folder), then the frame
            raise UnreadableSample(self.path, f"{os.path.basename(error.path)}: {error.reason}") from None
        shapes = {tuple(f.shape) for f in frames}
        if len(shapes) > 1:
            raise UnreadableSample(self.path, f"its frames differ in size: {sorted(shapes)}")
        return torch.stack(frames)


def _load_image(path: str) -> torch.Tensor:
    """uint8 (H, W, 3) RGB of one image file, or UnreadableSample."""
    from PIL import Image

    if not os.path.isfile(path):
        raise UnreadableSample(path, "no such file")
    if os.path.getsize(path) == 0:
        raise UnreadableSample(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            return torch.from_numpy(rgb_pixels(image, path))
    except UnreadableSample:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise UnreadableSample(path, f"Pillow cannot read it: {_one_line(error)}") from None


def rgb_pixels(image, where: str) -> np.ndarray:
    """uint8 (H, W, 3) of an opened Pillow image. Pillow's convert("RGB") clips pixels above 255: a 16-bit grey
    image (modes I;16*) is scaled to 8 bits instead (v / 257, so an 8-bit image stored as 16-bit reads the same),
    and a 32-bit int or float image (I, F) whose pixels leave 0..255 is an UnreadableSample naming its range."""
    if image.mode.startswith("I;16"):
        grey = np.round(np.asarray(image, dtype=np.float32) / 257).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        low, high = image.getextrema()
        if low < 0 or high > 255:
            raise UnreadableSample(where, f"a {image.mode}-mode image with pixels from {low} to {high}, beyond the "
                                          f"8-bit 0..255 it would be clipped to: save it as an 8-bit image")
    return np.array(image.convert("RGB"))


def read_image(path) -> torch.Tensor:
    """uint8 (1, H, W, 3) RGB of an image file (any mode Pillow reads: palette, grey, alpha dropped)."""
    return _load_image(os.fspath(path))[None]


READERS: dict[str, type] = {cls.name: cls for cls in (DecordReader, PyAVReader, TorchCodecReader, FrameFolderReader)}
VIDEO_READERS = ("decord", "pyav", "torchcodec")     # "auto" tries them in this order


def available_readers() -> list[str]:
    """The video readers whose library imports and loads here ("frames" always works and is not listed)."""
    return [name for name in VIDEO_READERS if READERS[name].available()]


class AutoReader:
    """Reader "auto": the first of decord, pyav, torchcodec that loads here, and the next one only for a file the
    first cannot open or cannot decode at all (its first read fails), logged as a warning naming the reader that
    read it. A file every reader refuses for the same reason (missing, empty, cut short: `_checked_file`) is never
    handed on, and a reader that has given frames of a file is never replaced for it."""

    name = "auto"

    def __init__(self, names: Sequence[str]):
        self.names = list(names)

    def open(self, path) -> Clip:
        path = _checked_file(path)
        failures = []
        for position, name in enumerate(self.names):
            try:
                clip = READERS[name]().open(path)
            except CannotOpen as error:
                failures.append(error.reason)
                continue
            if failures:
                log.warning("%s: %s; read with %s", path, failures[0], name)
            else:
                log.debug("%s: read with %s", path, name)
            return _FallbackClip(clip, self.names[position + 1:], failures) if position + 1 < len(self.names) \
                else clip
        raise CannotOpen(path, "; ".join(failures) if len(failures) > 1 else failures[0])


class _FallbackClip(Clip):
    """A clip whose first read, if its reader cannot decode the file at all, is served by the next reader."""

    def __init__(self, clip: Clip, rest: list[str], failures: list[str]):
        self.path, self.num_frames, self.fps = clip.path, clip.num_frames, clip.fps
        self._clip, self._rest, self._failures, self._read = clip, rest, failures, False

    @property
    def reader(self) -> str:
        return self._clip.reader if self._clip is not None else "auto"

    def _decode(self, indices: list[int]) -> torch.Tensor:
        if self._read:
            return self._clip._decode(indices)
        try:
            frames = self._clip._decode(indices)
        except UnreadableSample as error:
            if not self._rest or self._clip is None:
                raise
            first = error.reason
            self._clip.close()
            self._clip = AutoReader(self._rest).open(self.path)          # CannotOpen when none of them can either
            if self._clip.num_frames != self.num_frames:
                raise UnreadableSample(self.path, f"{first}; the next reader counts {self._clip.num_frames} frames, "
                                                  f"not {self.num_frames}: give one reader") from None
            frames = self._clip._decode(indices)
            log.warning("%s: %s; read with %s", self.path, first, self._clip.reader)
        self._read = True
        return frames

    def close(self) -> None:
        if self._clip is not None:
            self._clip.close()
        self._clip = None


def get_reader(name: str = "auto"):
    """A reader instance: "auto" is the first of decord, pyav, torchcodec that loads here, falling back to the
    next for a file it cannot open (AutoReader)."""
    if name == "auto":
        usable = available_readers()
        if not usable:
            raise ReaderUnavailable("no video reader loads here: pip install decord (x86-64) or pip install av")
        return AutoReader(usable) if len(usable) > 1 else READERS[usable[0]]()
    if name not in READERS:
        raise DataError(f"unknown reader {name!r} (known: auto, {', '.join(READERS)})")
    cls = READERS[name]
    if name != "frames":
        cls.library()                       # a missing library fails here, not at the first sample
    return cls()

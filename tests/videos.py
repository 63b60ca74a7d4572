"""Media for the reader tests, written with PyAV: clips whose every frame says which frame it is.

Frame i is a 3x4 grid of flat blocks. The top two rows hold i in binary (eight blocks, black = 0,
white = 1, least significant bit first), so `frame_index` recovers i after lossy H.264 compression.
The bottom row is pure red, green, blue and mid grey in every frame: a reader that swaps channels
or returns BGR fails `assert_rgb`.

Broken files for the error paths: `truncate` / `cut_at` (keep the first part of a file's bytes;
`packet_ends` gives the cuts between packets), `write_text` (a text file with a video's name),
`write_empty`, `write_zero_frames` (a video stream without frames) and `write_audio_only`.
"""

from __future__ import annotations

from pathlib import Path

import torch

ROWS, COLS, BITS = 3, 4, 8
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128))   # the bottom row, left to right


def pattern(index: int, size: tuple[int, int] = (48, 64)) -> torch.Tensor:
    """uint8 (H, W, 3) frame showing `index` (0 <= index < 256) as blocks; H and W multiples of 3 and 4."""
    if not 0 <= index < 2 ** BITS:
        raise ValueError(f"index {index} does not fit in {BITS} bits")
    height, width = size
    bh, bw = height // ROWS, width // COLS
    frame = torch.zeros(height, width, 3, dtype=torch.uint8)
    for bit in range(BITS):
        r, c = divmod(bit, COLS)
        if index >> bit & 1:
            frame[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 255
    for c, colour in enumerate(COLOURS):
        frame[2 * bh:3 * bh, c * bw:(c + 1) * bw] = torch.tensor(colour, dtype=torch.uint8)
    return frame


def _block_means(frame: torch.Tensor) -> torch.Tensor:
    """(ROWS, COLS, 3) mean colour of the centre half of each block (away from compression edges)."""
    height, width = frame.shape[:2]
    bh, bw = height // ROWS, width // COLS
    means = torch.empty(ROWS, COLS, 3)
    for r in range(ROWS):
        for c in range(COLS):
            block = frame[r * bh + bh // 4:(r + 1) * bh - bh // 4, c * bw + bw // 4:(c + 1) * bw - bw // 4]
            means[r, c] = block.float().mean(dim=(0, 1))
    return means


def frame_index(frame: torch.Tensor) -> int:
    """The index a `pattern` frame (uint8 (H, W, 3), possibly compressed) shows."""
    means = _block_means(frame).mean(dim=-1)
    return sum(1 << bit for bit in range(BITS) if means[divmod(bit, COLS)] > 128)


def assert_rgb(frame: torch.Tensor, tolerance: float = 40) -> None:
    """Fail unless the bottom row of a `pattern` frame is red, green, blue, grey in that order."""
    means = _block_means(frame)[2]
    expected = torch.tensor(COLOURS, dtype=torch.float32)
    assert (means - expected).abs().max() <= tolerance, f"bottom row {means.round().tolist()} is not RGB {COLOURS}"


def noisy(frame: torch.Tensor, seed: int, amplitude: int = 24) -> torch.Tensor:
    """`frame` plus uniform noise in [-amplitude, amplitude]: gives each encoded frame real bytes of data."""
    noise = torch.randint(-amplitude, amplitude + 1, frame.shape, generator=torch.Generator().manual_seed(seed))
    return (frame.int() + noise).clamp(0, 255).to(torch.uint8)


def write_video(path, num_frames: int, size: tuple[int, int] = (48, 64), fps: int = 25,
                faststart: bool = False, noise: bool = True, gop: int | None = None) -> Path:
    """An H.264 (libx264, yuv420p) mp4 of `num_frames` pattern frames; faststart puts the moov atom first.

    With `noise` every frame carries fresh noise, so the file's bytes are spread over all frames (as
    in real video) and cutting it short loses frames, not just the index. `gop` sets the keyframe
    interval (libx264's default, 250, makes frame 0 the only keyframe of a short clip), so readers
    that seek have keyframes to seek to. The mp4 has B-frames (libx264's default), so decode order
    differs from presentation order.
    """
    import av

    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(num_frames):
            image = noisy(pattern(i, size), seed=i) if noise else pattern(i, size)
            frame = av.VideoFrame.from_ndarray(image.numpy(), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_frames_folder(folder, num_frames: int, size: tuple[int, int] = (48, 64)) -> Path:
    """A folder of PNG frames frame_0.png ... frame_{n-1}.png (unpadded, so only natural order is right)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        Image.fromarray(pattern(i, size).numpy()).save(folder / f"frame_{i}.png")
    return folder


def write_image(path, index: int = 0, size: tuple[int, int] = (48, 64)) -> Path:
    """One pattern frame as an image file (format from the suffix)."""
    from PIL import Image

    Image.fromarray(pattern(index, size).numpy()).save(path)
    return Path(path)


def truncate(source, dest, fraction: float) -> Path:
    """Copy the first `fraction` of `source`'s bytes to `dest` (a download cut short)."""
    return cut_at(source, dest, int(Path(source).stat().st_size * fraction))


def cut_at(source, dest, size: int) -> Path:
    """Copy the first `size` bytes of `source` to `dest`."""
    Path(dest).write_bytes(Path(source).read_bytes()[:size])
    return Path(dest)


def packet_ends(path) -> list[int]:
    """Byte offsets where the video packets of `path` end, in file order (cut points between packets)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(p.pos + p.size for p in container.demux(stream) if p.size)


def write_zero_frames(path) -> Path:
    """A Matroska file with an H.264 video stream and not one frame (mp4 drops a track with no frames)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
        container.mux(stream.encode())
    return Path(path)


def write_audio_only(path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """An mp4 holding one AAC audio stream of silence and no video."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        for i in range(int(seconds * rate) // 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return Path(path)


def write_text(path) -> Path:
    """A text file with a media file's name."""
    Path(path).write_text("this is not a video, only text with a video's name\n" * 20)
    return Path(path)


def write_empty(path) -> Path:
    Path(path).write_bytes(b"")
    return Path(path)

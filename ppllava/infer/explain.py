"""The relevance map as a picture: each sampled frame under a heat map of where the question looks.

    summary = explain(pipe, "clip.mp4", "What is the man holding?", "relevance.png")

`render` draws a grid of the sampled frames, left to right then top to bottom. Each frame carries its
(g, g) relevance map upsampled (bilinear) to the frame as shown and coloured with 'inferno' (black for
none, through red and orange, to pale yellow for the most relevant patch of the whole video: one scale
for all frames, so frames compare). Under each frame: its index in the video and its share of the
relevance mass. The most relevant frame is outlined. A CLIP-style tower sees only the centre square of
a frame (short side resized, centre crop), so there the map covers that square and the strips the model
never sees are dimmed. Pillow and torch only.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

# matplotlib's 'inferno' at 0, 1/8, ..., 1 (perceptually uniform, readable in grey), linearly interpolated
INFERNO = ((0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
           (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164))
TILE = 256                  # a frame's longer side in the picture, px
PAD = 8                     # between tiles and around the grid, px
ALPHA = 0.5                 # heat map opacity over the frame
OUTSIDE = 0.2               # brightness of the parts of a frame the vision tower does not see
MAX_COLUMNS = 8
MIN_TITLE = 240             # px of title width at the least, for a grid of one narrow frame
BAR = 120                   # colour bar length, px
BACKGROUND, TEXT, PEAK = (22, 22, 22), (235, 235, 235), INFERNO[-2]


def colormap(x: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] (any shape) -> float RGB 0..255, shape (..., 3)."""
    table = torch.tensor(INFERNO, dtype=torch.float32)
    pos = x.float().clamp(0, 1) * (len(INFERNO) - 1)
    lo = pos.floor().long().clamp(max=len(INFERNO) - 2)
    frac = (pos - lo)[..., None]
    return table[lo] * (1 - frac) + table[lo + 1] * frac


def shares(relevance: torch.Tensor) -> list[float]:
    """Each frame's share of the relevance mass: relevance (T, g, g) summed over its patches."""
    return relevance.double().sum(dim=(1, 2)).tolist()


def default_columns(count: int) -> int:
    return max(1, min(MAX_COLUMNS, math.ceil(math.sqrt(count))))


@dataclass
class Layout:
    size: tuple[int, int]                       # (width, height) of the picture
    tile: tuple[int, int]                       # (height, width) of each frame in it
    columns: int
    rows: int
    boxes: list[tuple[int, int, int, int]]      # each frame's (left, top, right, bottom), in frame order
    title_lines: list[str]
    label_height: int


def layout(count: int, frame_hw: tuple[int, int], columns: int | None, title: str, fonts) -> Layout:
    """Where everything goes: a header (title, colour bar), then the tiles, each with a label strip under it."""
    if count < 1:
        raise ValueError("no frames to draw")
    columns = default_columns(count) if columns is None else columns
    if columns < 1:
        raise ValueError(f"--columns must be >= 1, got {columns}")
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    height, width = frame_hw
    scale = TILE / max(height, width)
    th, tw = max(1, round(height * scale)), max(1, round(width * scale))
    title_font, label_font = fonts
    grid_width = columns * tw + (columns + 1) * PAD
    image_width = max(grid_width, MIN_TITLE + 2 * PAD, _colour_bar_width(label_font) + 2 * PAD)
    lines = _wrap(title, title_font, image_width - 2 * PAD)
    header = PAD + len(lines) * _line_height(title_font) + _line_height(label_font) + 2 * PAD   # title, colour bar
    label = _line_height(label_font) + 4
    left0 = (image_width - grid_width) // 2 + PAD
    boxes = []
    for i in range(count):
        r, c = divmod(i, columns)
        left, top = left0 + c * (tw + PAD), header + r * (th + label + PAD)
        boxes.append((left, top, left + tw, top + th))
    return Layout((image_width, header + rows * (th + label + PAD)), (th, tw), columns, rows, boxes, lines, label)


def overlay(frame: torch.Tensor, heat: torch.Tensor, size: tuple[int, int], crop: bool,
            alpha: float = ALPHA) -> torch.Tensor:
    """One frame uint8 (H, W, 3) resized to `size` (h, w) under its heat map (g, g) in [0, 1] -> uint8 (h, w, 3)."""
    h, w = size
    x = F.interpolate(frame.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear", antialias=True,
                      align_corners=False)[0].clamp(0, 255)
    side_h, side_w = (min(h, w),) * 2 if crop else (h, w)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    up = F.interpolate(heat[None, None].float(), size=(side_h, side_w), mode="bilinear", align_corners=False)[0, 0]
    colours = colormap(up).permute(2, 0, 1)
    out = x * OUTSIDE
    seen = x[:, top:top + side_h, left:left + side_w]
    out[:, top:top + side_h, left:left + side_w] = (1 - alpha) * seen + alpha * colours
    return out.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)


def render(frames: torch.Tensor, relevance: torch.Tensor, indices, title: str, columns: int | None = None,
           crop: bool = False, alpha: float = ALPHA) -> Image.Image:
    """The picture: frames uint8 (T, H, W, 3) under relevance (T, g, g), labelled with `indices`, titled `title`.

    `crop`: the map covers only the centre square of each frame (CLIP preprocessing), the rest is dimmed.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if relevance.ndim != 3 or relevance.shape[0] != frames.shape[0] or len(indices) != frames.shape[0]:
        raise ValueError(f"{frames.shape[0]} frames, {len(indices)} indices and a relevance map of shape "
                         f"{tuple(relevance.shape)}: need one (g, g) map and one index per frame")
    frames, relevance = frames.cpu(), relevance.detach().float().cpu()
    fonts = _font(15), _font(13)
    plan = layout(len(frames), tuple(frames.shape[1:3]), columns, title, fonts)
    peak_value = float(relevance.max())
    heat = relevance / peak_value if peak_value > 0 else torch.zeros_like(relevance)
    share = shares(relevance)
    peak = max(range(len(share)), key=share.__getitem__)

    image = Image.new("RGB", plan.size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    title_font, label_font = fonts
    y = PAD
    for line in plan.title_lines:
        draw.text((PAD, y), line, font=title_font, fill=TEXT)
        y += _line_height(title_font)
    _colour_bar(image, draw, (PAD, y + PAD // 2), label_font, peak_value)
    for i, box in enumerate(plan.boxes):
        tile = overlay(frames[i], heat[i], plan.tile, crop, alpha)
        image.paste(Image.fromarray(tile.numpy()), box[:2])
        if i == peak and len(plan.boxes) > 1:
            draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 2, box[3] + 2), outline=PEAK, width=2)
        text = _fit(f"frame {indices[i]}  {_percent(share[i])}", label_font, plan.tile[1])
        draw.text((box[0], box[3] + 3), text, font=label_font, fill=PEAK if i == peak else TEXT)
    return image


def check_out(out: str | Path) -> Path:
    """Fail before any work when the picture cannot be written to `out`."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give the path of the .png file to write")
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: the picture is a PNG, give a path ending in .png")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"--out {out}: {out.parent} is not a folder")
    return out


def save_png(image: Image.Image, out: str | Path) -> Path:
    """Write atomically: a temporary file beside `out`, renamed over it, so no reader sees half a PNG."""
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                     # as open() would create it, not mkstemp's 0600
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def explain(pipeline, video_path: str | Path, prompt: str, out: str | Path, frames: int | None = None,
            columns: int | None = None) -> dict:
    """Draw where `prompt` looks in `video_path` (see `render`) to the PNG `out`; returns a summary."""
    out = check_out(out)
    visual = pipeline.read(video_path, frames)
    relevance = pipeline.relevance(visual, prompt)
    share = shares(relevance)
    peak = max(range(len(share)), key=share.__getitem__)
    name = Path(str(video_path)).name
    about = (f"{name}: {len(share)} sampled frames, the most relevant is frame {visual.indices[peak]} "
             f"({_percent(share[peak])} of the relevance)" if len(share) > 1 else f"{name}: one frame")
    title = f"\u201c{prompt.strip()}\u201d\n{about}"
    image = render(visual.frames, relevance, visual.indices, title, columns, crop=pipeline.preprocess.crop)
    save_png(image, out)
    return {"path": str(out), "video": str(video_path), "prompt": prompt.strip(), "frames": list(visual.indices),
            "shares": share, "peak_frame": visual.indices[peak], "peak_share": share[peak],
            "size": list(image.size), "columns": min(columns or default_columns(len(share)), len(share))}


# -- text ------------------------------------------------------------------------------------------------
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)          # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()                   # the small bitmap font


def _line_height(font) -> int:
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (11, 2)
    return ascent + descent + 2


def _drawable(text: str, font) -> str:
    """The bitmap fallback font encodes latin-1 only."""
    return text if isinstance(font, ImageFont.FreeTypeFont) else text.encode("latin-1", "replace").decode("latin-1")


def _fit(text: str, font, width: int) -> str:
    """`text` cut (with an ellipsis) to `width` px."""
    text = _drawable(text, font)
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "\u2026") > width:
        text = text[:-1]
    return text + "\u2026"


def _wrap(text: str, font, width: int, max_lines: int = 4) -> list[str]:
    """Greedy word wrap to `width` px; each line of `text` takes at most `max_lines` lines (an ellipsis if cut)."""
    lines = []
    for paragraph in _drawable(text, font).splitlines() or [""]:
        wrapped, line = [], ""
        for word in paragraph.split():
            trial = f"{line} {word}" if line else word
            if line and font.getlength(trial) > width:
                wrapped.append(line)
                line = word
            else:
                line = trial
        wrapped.append(line)
        if len(wrapped) > max_lines:
            wrapped = wrapped[:max_lines - 1] + [wrapped[max_lines - 1] + " \u2026"]
        lines += wrapped
    return [_fit(line, font, width) for line in lines]


def _percent(share: float) -> str:
    return "<0.1%" if 0 < share < 0.0005 else f"{share:.1%}"


BAR_LEFT, BAR_RIGHT = "relevance  0", "{} (the hottest patch)"


def _colour_bar_width(font) -> int:
    return int(font.getlength(BAR_LEFT) + font.getlength(BAR_RIGHT.format("100.0%"))) + BAR + 12


def _colour_bar(image: Image.Image, draw: ImageDraw.ImageDraw, at: tuple[int, int], font, peak: float) -> None:
    """A legend: "relevance 0 [inferno bar] X% (the hottest patch)"."""
    x, y = at
    height = max(6, _line_height(font) - 6)
    draw.text((x, y), BAR_LEFT, font=font, fill=TEXT)
    x += int(font.getlength(BAR_LEFT)) + 6
    bar = colormap(torch.linspace(0, 1, BAR))[None].expand(height, -1, -1).round().to(torch.uint8)
    image.paste(Image.fromarray(bar.contiguous().numpy()), (x, y + 3))
    draw.text((x + BAR + 6, y), BAR_RIGHT.format(_percent(peak)), font=font, fill=TEXT)

"""LLaVA-NeXT's "anyres" image layout, as the authors' encode_image feeds it to the LLM.

An image of (height, width) is cut into the crops of the grid resolution that fits it best (plus one crop
of the whole image, first); after pooling, the grid crops' tokens are laid out as one 2-D map, the rows
and columns that are padding in the resized image are cut off (unpadding), and `image_newline` ends each
row. Written from transformers 4.45's select_best_resolution / get_anyres_image_grid_shape / unpad_image
(the version the authors used: the unpadded size is truncated, not rounded).
"""

from __future__ import annotations

import torch


def best_resolution(image_size: tuple[int, int], pinpoints: list[list[int]]) -> tuple[int, int]:
    """The (height, width) of `pinpoints` that keeps the most of the image's resolution, then wastes least."""
    height, width = image_size
    best, most, least_wasted = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = w * h - effective
        if effective > most or (effective == most and wasted < least_wasted):
            best, most, least_wasted = (h, w), effective, wasted
    return best


def grid_shape(image_size: tuple[int, int], pinpoints: list[list[int]], crop: int) -> tuple[int, int]:
    """(rows, columns) of crops an image of `image_size` is cut into."""
    h, w = best_resolution(image_size, pinpoints)
    return h // crop, w // crop


def unpadded(height: int, width: int, image_size: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of a (height, width) token map that hold the image, not the padding around it."""
    original_h, original_w = image_size
    if original_w / original_h > width / height:
        pad = (height - int(original_h * (width / original_w))) // 2
        return slice(pad, height - pad), slice(0, width)
    pad = (width - int(original_w * (height / original_h))) // 2
    return slice(0, height), slice(pad, width - pad)


def tokens(grid: tuple[int, int], side: int, image_size: tuple[int, int]) -> int:
    """Tokens of an anyres image: the whole-image crop's side x side, then the unpadded map with a newline per row."""
    rows, cols = unpadded(grid[0] * side, grid[1] * side, image_size)
    return side * side + (rows.stop - rows.start) * (cols.stop - cols.start + 1)


def layout(crops: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int],
           newline: torch.Tensor) -> torch.Tensor:
    """crops (1 + rows*cols, side, side, D) pooled tokens -> (N, D): the whole-image crop, then the grid map
    unpadded, row by row, each row ended by `newline` (D,)."""
    side, d = crops.shape[1], crops.shape[-1]
    rows, cols = grid
    if crops.shape[0] != 1 + rows * cols:
        raise ValueError(f"an anyres image of {tuple(image_size)} needs 1 + {rows}x{cols} crops, got {crops.shape[0]}")
    tiles = crops[1:].reshape(rows, cols, side, side, d).permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, d)
    keep_rows, keep_cols = unpadded(rows * side, cols * side, image_size)
    tiles = tiles[keep_rows, keep_cols]
    tiles = torch.cat([tiles, newline.to(tiles.dtype).expand(tiles.shape[0], 1, d)], dim=1)
    return torch.cat([crops[0].reshape(side * side, d), tiles.reshape(-1, d)])

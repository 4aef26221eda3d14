"""Generated digits as images: uint8 conversion, a tiled grid, PNG bytes and files (Pillow)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8)


def grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W) uint8 images into one (rows*(H+pad)+pad, cols*(W+pad)+pad) image on a black background."""
    n, h, w = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad), np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return out


def encode_png(image: np.ndarray, scale: int = 1) -> bytes:
    """A 2-D uint8 image as PNG bytes (Pillow), optionally enlarged by an integer factor."""
    from PIL import Image  # imported when used: only PNG output needs Pillow

    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: str | Path, image: np.ndarray, scale: int = 1) -> Path:
    """Write a 2-D uint8 image as a PNG file, optionally enlarged by an integer factor."""
    p = Path(path)
    p.write_bytes(encode_png(image, scale))
    return p

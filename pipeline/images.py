"""Decoding any image a user's collection may hold, or saying exactly why not.

Pillow reads every format we list (JPEG incl. CMYK, PNG incl. palette/RGBA/16-bit,
WebP, BMP, TIFF) and reports the size from the header before decoding, so a
decompression bomb is refused without allocating it. Failures are ImageError with a
kind (for the summary's counts) and a message (for the row).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold


class ImageError(ValueError):
    """An input that cannot become an image; `kind` is a short stable label."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass(frozen=True)
class Header:
    """What the first bytes of a file say: displayed size, EXIF orientation, decoder."""
    width: int
    height: int
    orientation: int  # EXIF 1-8 (1: as stored)
    plain_jpeg: bool  # an RGB or greyscale JPEG: torchvision (nvJPEG on a GPU) decodes it as Pillow does


def probe(data: bytes, max_pixels: int = MAX_PIXELS) -> Header:
    """Read the header only (no pixels): the size after EXIF orientation, or an ImageError."""
    with _open(data, max_pixels) as image:
        width, height = image.size
        try:
            orientation = int(image.getexif().get(0x0112, 1))
        except Exception:  # a malformed EXIF block: show the pixels as stored
            orientation = 1
        if orientation not in range(1, 9):
            orientation = 1
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        return Header(width, height, orientation, image.format == "JPEG" and image.mode in ("RGB", "L"))


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("empty", "zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise ImageError("too_large", str(e)) from e
        except Image.UnidentifiedImageError as e:
            raise ImageError("undecodable", "not a recognised image format") from e
        except Exception as e:  # Pillow raises several types for "not an image"
            raise ImageError("undecodable", f"not a readable image ({type(e).__name__}: {e})") from e
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} exceeds the limit of {max_pixels} pixels")
    return image


def decode_rgb(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """uint8 HxWx3 RGB in the displayed orientation (EXIF applied)."""
    image = _open(data, max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
        except Exception as e:
            raise ImageError("undecodable", f"{image.format or 'image'} data is corrupt ({type(e).__name__}: {e})") from e


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grey: scale, do not clip
        grey = np.asarray(image, dtype=np.float64)
        top = 255.0 if image.mode == "F" else 65535.0
        grey = np.clip(grey * (255.0 / top), 0, 255).round().astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))  # transparent -> white
        image = Image.alpha_composite(background, image)
    return np.array(image.convert("RGB"))  # a writable copy (torch.from_numpy wants one)

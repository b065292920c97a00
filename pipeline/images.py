"""The one decoder: any image a user's collection may hold -> uint8 RGB as displayed, for
training, validation, detection and pictures alike, or an ImageError saying exactly why not.

Pillow reads every format we list (JPEG incl. CMYK, PNG incl. palette/RGBA/16-bit, WebP, BMP,
TIFF) and reports the size from the header before decoding (probe), so a decompression bomb is
refused without allocating it. Failures are ImageError with a kind (for the summary's counts)
and a message (for the row).

decode_images: plain JPEGs (RGB or greyscale) are decoded by torchvision, in one batched call on
the model's device (nvJPEG on a GPU, libjpeg-turbo on a CPU, which gives Pillow's pixels
exactly), then turned by their EXIF orientation; every other image (PNG, WebP, CMYK JPEG, 16-bit,
palette, transparency) by Pillow with the same rules (decode_rgb: EXIF orientation applied,
transparency composited on white, 16-bit scaled to 8). So a transparent PNG gives the same
pixels to training as to detection. torch is imported by those functions alone: the read tasks
of bulk detection probe headers without it.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

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


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """One image on the CPU; ImageError (with its kind) when it cannot be decoded."""
    import torch

    (image,) = decode_images([(data, probe(data, max_pixels))], torch.device("cpu"))
    if isinstance(image, ImageError):
        raise image
    return image


def decode_images(items: Sequence[tuple[bytes, Header]], device: torch.device) -> list[torch.Tensor | ImageError]:
    """Each (bytes, header) decoded on `device`, or the ImageError that says why not. The
    header (probe) decides the decoder and must tell the decoded size."""
    import torch

    out: list[torch.Tensor | ImageError | None] = [None] * len(items)
    jpegs = [k for k, (_, header) in enumerate(items) if header.plain_jpeg]
    for k, image in zip(jpegs, _decode_jpegs([items[k][0] for k in jpegs], device)):
        out[k] = image if isinstance(image, ImageError) else orient(image, items[k][1].orientation)
    for k, (data, _) in enumerate(items):
        if out[k] is None:
            try:
                out[k] = _to_device(torch.from_numpy(decode_rgb(data)).permute(2, 0, 1), device)
            except ImageError as e:
                out[k] = e
    for k, decoded in enumerate(out):  # the header's size decides the canvas: it must be the truth
        header = items[k][1]
        if isinstance(decoded, torch.Tensor) and (decoded.shape[2], decoded.shape[1]) != (header.width, header.height):
            out[k] = ImageError("undecodable", f"decoded size {decoded.shape[2]}x{decoded.shape[1]} differs from the "
                                               f"header's {header.width}x{header.height}")
    return out  # type: ignore[return-value]


def _decode_jpegs(data: Sequence[bytes], device: torch.device) -> list[torch.Tensor | ImageError]:
    """Stored-orientation pixels of plain JPEGs, in one call; a corrupt file in the batch makes
    the call fail, and then each is decoded alone to find it."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not data:
        return []
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        found: list[torch.Tensor | ImageError] = []
        for tensor in encoded:
            try:
                found.append(decode_jpeg([tensor], mode=ImageReadMode.RGB, device=device)[0])
            except RuntimeError as e:
                found.append(ImageError("undecodable", f"JPEG data is corrupt ({str(e).rsplit(', ', 1)[-1]})"))
        return found


def _to_device(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return pixels.contiguous()
    return pixels.contiguous().pin_memory().to(device, non_blocking=True)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[...,H,W] stored pixels -> displayed pixels for an EXIF orientation (1-8), as Pillow's
    ImageOps.exif_transpose does."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-1, -2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 5: (), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation, ())
    return image.flip(flips) if flips else image

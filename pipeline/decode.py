"""The one decoder: encoded bytes -> uint8 3xHxW RGB as displayed, for training, validation,
detection and pictures alike.

Plain JPEGs (RGB or greyscale) are decoded by torchvision, in one batched call on the model's
device (nvJPEG on a GPU, libjpeg-turbo on a CPU, which gives Pillow's pixels exactly), then
turned by their EXIF orientation; every other image (PNG, WebP, CMYK JPEG, 16-bit, palette,
transparency) by Pillow with the same rules (pipeline/images.py: EXIF orientation applied,
transparency composited on white, 16-bit scaled to 8). So a transparent PNG gives the same
pixels to training as to detection.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from .images import MAX_PIXELS, Header, ImageError, decode_rgb, probe


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """One image on the CPU; ImageError (with its kind) when it cannot be decoded."""
    (image,) = decode_images([(data, probe(data, max_pixels))], torch.device("cpu"))
    if isinstance(image, ImageError):
        raise image
    return image


def decode_images(items: Sequence[tuple[bytes, Header]], device: torch.device) -> list[torch.Tensor | ImageError]:
    """Each (bytes, header) decoded on `device`, or the ImageError that says why not. The
    header (pipeline/images.probe) decides the decoder and must tell the decoded size."""
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
    for k, image in enumerate(out):  # the header's size decides the canvas: it must be the truth
        header = items[k][1]
        if isinstance(image, torch.Tensor) and (image.shape[2], image.shape[1]) != (header.width, header.height):
            out[k] = ImageError("undecodable", f"decoded size {image.shape[2]}x{image.shape[1]} differs from the "
                                               f"header's {header.width}x{header.height}")
    return out  # type: ignore[return-value]


def _decode_jpegs(data: Sequence[bytes], device: torch.device) -> list[torch.Tensor | ImageError]:
    """Stored-orientation pixels of plain JPEGs, in one call; a corrupt file in the batch makes
    the call fail, and then each is decoded alone to find it."""
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

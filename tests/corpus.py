"""Generated image files covering what a real collection throws at bulk detection."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# name -> expected error kind (None: decodes, and gets detections or none)
EXPECTED = {
    "good.jpg": None,
    "grey.jpg": None,
    "cmyk.jpg": None,
    "palette.png": None,
    "rgba.png": None,
    "transparent.png": None,
    "grey16.png": None,
    "rotated.jpg": None,
    "tiny.png": None,
    "wide.png": None,
    "picture.bmp": None,
    "picture.tif": None,
    "empty.jpg": "empty",
    "truncated.jpg": "undecodable",
    "text.jpg": "undecodable",
    "bomb.png": "too_large",
}


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG whose header claims width x height (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def rotated_photo() -> tuple[bytes, tuple[int, int]]:
    """A 120x60 landscape stored with EXIF orientation 6 (displayed rotated: 60x120)."""
    pixels = np.zeros((60, 120, 3), np.uint8)
    pixels[:, :40] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(pixels), "JPEG", exif=exif), (60, 120)


def transparent_png() -> bytes:
    """60x80 RGBA: stored red everywhere, the right half fully transparent (shown white)."""
    pixels = np.zeros((60, 80, 4), np.uint8)
    pixels[..., 0] = 255
    pixels[:, :40, 3] = 255
    return _encode(Image.fromarray(pixels, "RGBA"), "PNG")


def write_corpus(folder: Path) -> dict[str, str | None]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (90, 140, 3), dtype=np.uint8))
    good = _encode(photo, "JPEG")
    files = {
        "good.jpg": good,
        "grey.jpg": _encode(photo.convert("L"), "JPEG"),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG"),
        "palette.png": _encode(photo.convert("P"), "PNG"),
        "rgba.png": _encode(photo.convert("RGBA"), "PNG"),
        "transparent.png": transparent_png(),
        "grey16.png": _encode(Image.fromarray(rng.integers(0, 65535, (70, 50), dtype=np.uint16)), "PNG"),
        "rotated.jpg": rotated_photo()[0],
        "tiny.png": _encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        "wide.png": _encode(Image.new("RGB", (3000, 3), (200, 10, 10)), "PNG"),
        "picture.bmp": _encode(photo, "BMP"),
        "picture.tif": _encode(photo, "TIFF"),
        "empty.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "text.jpg": b"this is not an image\n",
        "bomb.png": _png_header_only(100_000, 100_000),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return dict(EXPECTED)


def write_pictures(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        path = folder / f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths

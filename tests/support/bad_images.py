"""Files that are not usable pictures, as users and client programs send them by mistake (or on
purpose): each with the words the refusal must contain."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 30_000) -> bytes:
    """A file of about 1 kB whose header claims a side x side picture."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + _chunk(b"IEND", b""))


def truncated_png() -> bytes:
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    return png(noisy)[:300]


def over_limit_png() -> bytes:
    """A real, complete 5000x4000 picture (20 megapixels, over the default 16 limit) that
    compresses to a few kB: Pillow itself would open it without complaint."""
    return png(Image.new("L", (5000, 4000), 0))


# (name, file bytes, words the message must contain)
BAD_FILES = [
    ("empty", b"", "empty"),
    ("text", b"this is not a picture at all", "not an image"),
    ("garbage", bytes(range(256)) * 8, "not an image"),
    ("truncated", truncated_png(), "damaged or truncated"),
    ("bomb", bomb_png(), "megapixels"),
    ("over_limit", over_limit_png(), "limited to 16 megapixels"),
]

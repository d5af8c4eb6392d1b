"""Saving images: atomically, under the ecosystem's folder and file names, with infotext inside.

outputs/txt2img-images/YYYY-MM-DD/00012-123456.png
outputs/txt2img-grids/YYYY-MM-DD/grid-0003.png
"""

from __future__ import annotations

import datetime as dt
import io
import math
import os
import re
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin

from .infotext import INFOTEXT_KEY

_NUMBERED = re.compile(r"^(\d+)[-.]")
_GRID = re.compile(r"^grid-(\d+)")


def png_bytes(image: Image.Image, infotext: str | None, more_text: dict[str, str] | None = None) -> bytes:
    """The image as PNG with the infotext in its `parameters` text chunk (and any other text)."""
    meta = PngImagePlugin.PngInfo()
    if infotext:
        meta.add_text(INFOTEXT_KEY, infotext)
    for key, value in (more_text or {}).items():
        meta.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta)
    return buffer.getvalue()


EXIF_IFD, EXIF_USER_COMMENT = 0x8769, 0x9286


def read_infotext(image: Image.Image) -> str | None:
    """The generation parameters stored in an image: the PNG text chunk, else (JPEG, WEBP) the
    EXIF UserComment, as the ecosystem writes them."""
    value = image.info.get(INFOTEXT_KEY)
    if isinstance(value, str):
        return value
    try:
        comment = image.getexif().get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
    except Exception:  # a damaged EXIF block is no reason to fail: there is simply no infotext
        return None
    return _decode_user_comment(comment)


def _decode_user_comment(comment) -> str | None:
    """EXIF UserComment: an 8-byte character code, then the text."""
    if isinstance(comment, str):
        return comment or None
    if not isinstance(comment, bytes) or not comment:
        return None
    code, body = comment[:8], comment[8:]
    if code.startswith(b"UNICODE"):
        # The ecosystem writes UTF-16 big-endian; some tools write little-endian. The right
        # reading of an infotext is the one that is mostly ASCII.
        readings = [body.decode(encoding, errors="replace") for encoding in ("utf-16-be", "utf-16-le")]
        text = max(readings, key=lambda t: sum(ch.isascii() for ch in t))
        return text.rstrip("\x00") or None
    return body.decode("utf-8", errors="replace").rstrip("\x00") or None


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over `path`.

    A crash at any moment leaves either no file or the whole file, never a truncated image.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def _next_number(folder: Path, pattern: re.Pattern) -> int:
    highest = -1
    if folder.is_dir():
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def make_grid(images: list[Image.Image]) -> Image.Image:
    """Images in rows and columns, as square as the count allows."""
    count = len(images)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), "black")
    for index, image in enumerate(images):
        grid.paste(image, ((index % cols) * width, (index // cols) * height))
    return grid


class OutputWriter:
    """Knows the output root and the folder names; one per app."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def images_dir(self, mode: str, when: dt.date | None = None) -> Path:
        return self.root / f"{mode}-images" / (when or dt.date.today()).isoformat()

    def grids_dir(self, mode: str, when: dt.date | None = None) -> Path:
        return self.root / f"{mode}-grids" / (when or dt.date.today()).isoformat()

    def save_image(self, image: Image.Image, mode: str, seed: int, infotext: str | None) -> Path:
        folder = self.images_dir(mode)
        number = _next_number(folder, _NUMBERED)
        path = folder / f"{number:05d}-{seed}.png"
        write_atomically(path, png_bytes(image, infotext))
        return path

    def save_extras(self, image: Image.Image, infotext: str | None, extras: str) -> Path:
        """outputs/extras-images/YYYY-MM-DD/NNNNN.png"""
        folder = self.images_dir("extras")
        path = folder / f"{_next_number(folder, _NUMBERED):05d}.png"
        write_atomically(path, png_bytes(image, infotext, {"extras": extras}))
        return path

    def save_grid(self, images: list[Image.Image], mode: str, infotext: str | None) -> Path:
        folder = self.grids_dir(mode)
        number = _next_number(folder, _GRID)
        path = folder / f"grid-{number:04d}.png"
        write_atomically(path, png_bytes(make_grid(images), infotext))
        return path

"""The pictures already saved under the outputs folder, newest first: what the History tab shows,
so a picture whose browser tab was closed before it arrived is still found.

The UI may be shared on a LAN, so nothing outside the outputs folder is ever listed or opened:
paths are resolved and judged by where they lead, symlinked folders are not walked, a symlinked
file counts only when its target is inside too, and a name coming back from the page is checked
again before it is read.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from engine.errors import NotFoundError, UserError
from engine.output.infotext import INFOTEXT_KEY
from engine.files import TEMP_PREFIX
from engine.output.writer import DETECTED_MAPS, OutputWriter, read_infotext

log = logging.getLogger(__name__)

# kind -> (folder kind, modes) as OutputWriter.base_folder names them; "all" is the whole outputs folder.
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "all": ("", ()),
    "txt2img": ("samples", ("txt2img",)),
    "img2img": ("samples", ("img2img",)),
    "extras": ("samples", ("extras",)),
    "grids": ("grids", ("txt2img", "img2img")),
}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
# Modes the gallery can show as they are; others (CMYK JPEG, 16-bit) are converted for it.
_SHOWABLE_MODES = frozenset({"RGB", "RGBA", "L", "LA"})


@dataclass(frozen=True)
class SavedImage:
    name: str  # relative to the outputs folder, with "/" (what the page is told and sends back)
    path: Path  # resolved, inside the outputs folder
    mtime: float


@dataclass(frozen=True)
class HistoryPage:
    images: list[SavedImage]
    number: int  # 1-based, within 1..pages
    pages: int  # at least 1, so "page 1 of 1" reads right with nothing saved yet
    total: int


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _is_picture_name(name: str) -> bool:
    # Dot files include the temporary files of unfinished writes (engine.files.TEMP_PREFIX).
    return not name.startswith((".", TEMP_PREFIX)) and Path(name).suffix.lower() in IMAGE_SUFFIXES


class SavedImages:
    """Lists and opens the pictures below `writer.root`, in the folders `writer`'s settings choose."""

    def __init__(self, writer: OutputWriter):
        self.writer = writer

    def _root(self) -> Path | None:
        try:
            root = self.writer.root.resolve()
        except (OSError, RuntimeError):
            return None
        return root if root.is_dir() else None

    def folders(self, kind: str) -> list[Path]:
        """The folders (not yet resolved) that hold pictures of this kind."""
        if kind not in KINDS:
            raise NotFoundError(f"Unknown kind of picture {kind!r}; choose one of {', '.join(KINDS)}", "kind")
        folder_kind, modes = KINDS[kind]
        if not modes:
            return [self.writer.root]
        return [self.writer.base_folder(folder_kind, mode) for mode in modes]

    def newest_first(self, kind: str = "all") -> list[SavedImage]:
        """Every saved picture of this kind, newest first (ties: the higher file name first, so
        00012 comes before 00011 when both were saved within the same clock tick)."""
        root = self._root()
        if root is None:
            return []
        found: dict[str, SavedImage] = {}  # by name: folders of two kinds may be one and the same
        for folder in self.folders(kind):
            try:
                top = folder.resolve()
            except (OSError, RuntimeError):
                continue
            if not _inside(top, root):
                # Possible only for a default folder the machine's owner replaced by a symlink.
                log.warning("History: %s leads outside the outputs folder (%s); not listed", folder, top)
                continue
            for item in self._walk(top, root):
                found.setdefault(item.name, item)
        return sorted(found.values(), key=lambda item: (item.mtime, item.name), reverse=True)

    def _walk(self, top: Path, root: Path):
        # followlinks=False: a symlinked folder could lead anywhere, or back into a loop.
        for folder, subfolders, files in os.walk(top, followlinks=False):
            # The ControlNet maps saved beside the pictures are not pictures of the studio's.
            subfolders[:] = [name for name in subfolders if not name.startswith(".") and name != DETECTED_MAPS]
            for name in files:
                if not _is_picture_name(name):
                    continue
                item = self._saved(Path(folder) / name, root)
                if item is not None:
                    yield item

    @staticmethod
    def _saved(path: Path, root: Path) -> SavedImage | None:
        try:
            target = path.resolve()
            stat = target.stat()
        except (OSError, RuntimeError, ValueError):  # removed meanwhile, a dangling link, a loop
            return None
        if not _inside(target, root) or not target.is_file():
            return None
        # `path` lies below root (callers build it so); a link keeps its own name, where the user put it.
        return SavedImage(path.relative_to(root).as_posix(), target, stat.st_mtime)

    def page(self, kind: str = "all", number: int = 1, size: int = 24) -> HistoryPage:
        """Page `number` (clamped into range) of `size` pictures, newest first."""
        size = max(1, int(size))
        items = self.newest_first(kind)
        pages = max(1, math.ceil(len(items) / size))
        number = min(max(1, int(number)), pages)
        start = (number - 1) * size
        return HistoryPage(items[start:start + size], number, pages, len(items))

    def find(self, name: str) -> SavedImage:
        """The saved picture called `name` (relative to the outputs folder), checked again: the
        name came back from a browser, so it is trusted no further than a typed path."""
        root = self._root()
        missing = NotFoundError(f"No saved picture {name!r} in the outputs folder", "name")
        relative = PurePosixPath(str(name or "").replace("\\", "/"))
        if root is None or not relative.parts or relative.is_absolute() or not _is_picture_name(relative.name) \
                or any(part.startswith(".") for part in relative.parts):  # "..", and what listing skips
            raise missing
        item = self._saved(root.joinpath(*relative.parts), root)
        if item is None:
            raise missing
        return item

    def infotext(self, item: SavedImage) -> str | None:
        """The generation parameters inside the file (PNG text chunk, or EXIF for JPEG/WEBP)."""
        with self._open(item) as image:
            text = read_infotext(image)
            if text is None and image.format == "PNG":
                try:
                    image.load()  # a text chunk written after the pixels is read only with them
                except (OSError, SyntaxError, ValueError):
                    return None  # damaged pixels: whatever text came before them was all there is
                text = read_infotext(image)
            return text

    def open(self, item: SavedImage, max_side: int | None = None) -> Image.Image:
        """The picture, scaled down to fit `max_side` if given, with its infotext in
        info["parameters"] whatever the file's format (so a PNG copy of it keeps them)."""
        with self._open(item) as image:
            try:
                image.load()
                text = read_infotext(image)
                if max_side and max(image.size) > max_side:
                    image.thumbnail((max_side, max_side))
                if image.mode not in _SHOWABLE_MODES:
                    has_alpha = "A" in image.mode or "transparency" in image.info
                    image = image.convert("RGBA" if has_alpha else "RGB")
                picture = image.copy()
            except (OSError, SyntaxError, ValueError) as error:
                raise UserError(f"{item.name} could not be read: the file is damaged ({error})", "name")
        picture.info = {INFOTEXT_KEY: text} if text else {}
        return picture

    @staticmethod
    def _open(item: SavedImage) -> Image.Image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return Image.open(item.path)
        except FileNotFoundError:
            raise NotFoundError(f"{item.name} is no longer in the outputs folder", "name")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(f"{item.name} is too large to show", "name")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise UserError(f"{item.name} could not be read: the file is damaged ({error})", "name")

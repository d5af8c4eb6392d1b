"""Saving images: atomically, under the ecosystem's folder and file names, with infotext inside.

outputs/txt2img-images/YYYY-MM-DD/00012-123456.png
outputs/txt2img-grids/YYYY-MM-DD/grid-0003.png

Format, names and folders follow the "Saving images" settings (engine/output/saving_options.py), read at
each save so a change applies to the next image without a restart.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import re
import threading
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from engine.errors import RequestError
from engine.files import write_atomically
from engine.output.filenames import NAME_CHARS, ImageFields, expand, safe_name
from engine.output.infotext import INFOTEXT_KEY
from engine.output.saving_options import FOLDER_DEFAULTS, SAVING_DEFAULTS, resolve_folder

log = logging.getLogger(__name__)

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
SUFFIXES = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
_PIL_FORMATS = {"jpg": "JPEG", "webp": "WEBP"}
_MAX_SIDE = {"jpg": 65535, "webp": 16383}  # larger pictures are saved as PNG instead
_MAX_EXIF = 65000  # a JPEG's EXIF block must fit one 64 KiB segment


def exif_bytes(infotext: str) -> bytes:
    """An EXIF block with the infotext in UserComment, as the ecosystem writes it: the
    character code UNICODE, then UTF-16 big-endian."""
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = b"UNICODE\x00" + infotext.encode("utf-16-be")
    return exif.tobytes()


def image_bytes(image: Image.Image, file_format: str, infotext: str | None, quality: int = 80,
                lossless: bool = False, more_text: dict[str, str] | None = None) -> bytes:
    """The image encoded as png, jpg or webp, with the infotext inside (PNG text chunk or EXIF).
    `more_text` (PNG only) are further text chunks, like the extras tab's."""
    if file_format == "png":
        return png_bytes(image, infotext, more_text)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    # JPEG has no alpha channel; WEBP keeps it.
    image = image.convert("RGBA" if has_alpha and file_format == "webp" else "RGB")
    extra: dict[str, Any] = {}
    if infotext:
        exif = exif_bytes(infotext)
        if len(exif) <= _MAX_EXIF:
            extra["exif"] = exif
        else:
            log.warning("infotext too long for the %s EXIF block (%d bytes); saved without it",
                        file_format, len(exif))
    if file_format == "webp":
        extra["lossless"] = lossless
    buffer = io.BytesIO()
    image.save(buffer, format=_PIL_FORMATS[file_format], quality=quality, **extra)
    return buffer.getvalue()


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


def _moment(when: dt.date | dt.datetime | None) -> dt.datetime:
    if when is None:
        return dt.datetime.now()
    return when if isinstance(when, dt.datetime) else dt.datetime.combine(when, dt.time())


# Where the ControlNet units' detected maps are saved, below a samples folder (not History's).
DETECTED_MAPS = "detected_maps"


class OutputWriter:
    """Saves finished pictures below `root` (the data dir's outputs folder), as the settings say.

    Folder settings are relative to root's parent (the data dir) and must stay inside root; a
    folder that does not (config.json edited by hand, a symlink changed since) is replaced by the
    default one with a warning in the log. Without `settings`, the defaults apply.
    """

    def __init__(self, root: Path, settings=None, name_limit: int = NAME_CHARS):
        self.root = Path(root)
        self.settings = settings
        self.name_limit = name_limit  # --filenames-max-length
        self._lock = threading.Lock()  # a number is taken and its file written as one step

    def _option(self, key: str) -> Any:
        if self.settings is not None:
            try:
                return self.settings[key]
            except KeyError:
                pass
        return SAVING_DEFAULTS[key]

    # Folders.
    def base_folder(self, kind: str, mode: str) -> Path:
        """`kind` "samples" or "grids": the folder the settings choose for this mode, before any
        date sub-folder (the History tab lists what is below it)."""
        default = self.root / f"{mode}-{'images' if kind == 'samples' else 'grids'}"
        for key in (f"outdir_{kind}", f"outdir_{mode}_{kind}"):
            value = self._option(key) if key in FOLDER_DEFAULTS else ""
            if not value:
                continue  # the shared folder is unset: the mode's own decides
            if value == FOLDER_DEFAULTS[key]:
                return default
            try:
                return resolve_folder(key, value, self.root.parent, self.root)
            except RequestError as error:
                log.warning("%s; saving to %s instead", error.message, default)
                return default
        return default

    def _folder(self, kind: str, mode: str, now: dt.datetime, fields: ImageFields | None) -> Path:
        folder = self.base_folder(kind, mode)
        if self._option("grid_save_to_dirs" if kind == "grids" else "save_to_dirs"):
            pattern = self._option("directories_filename_pattern") or "[date]"
            sub = safe_name(expand(pattern, fields or ImageFields(), now), self.name_limit)
            if sub:
                folder = folder / sub  # one level: safe_name leaves no separators
        return folder

    def images_dir(self, mode: str, when: dt.date | None = None, fields: ImageFields | None = None) -> Path:
        return self._folder("samples", mode, _moment(when), fields)

    def grids_dir(self, mode: str, when: dt.date | None = None, fields: ImageFields | None = None) -> Path:
        return self._folder("grids", mode, _moment(when), fields)

    # Saving.
    def save_image(self, image: Image.Image, mode: str, seed: int, infotext: str | None,
                   fields: ImageFields | None = None, suffix: str = "") -> Path:
        """NNNNN-<pattern><suffix>.<format> in the mode's folder; the pattern defaults to [seed].
        `suffix`: for a copy of an image at an earlier stage ("-before-face-restoration")."""
        now, fields = dt.datetime.now(), fields or ImageFields(seed=seed)
        name = safe_name(expand(self._option("samples_filename_pattern") or "[seed]", fields, now),
                         self.name_limit - len(suffix)) + suffix
        return self._save(self.images_dir(mode, now, fields), name, self._option("save_images_add_number"),
                          image, self._option("samples_format"), infotext)

    def save_extras(self, image: Image.Image, infotext: str | None, extras: str) -> Path:
        """NNNNN.<format> in the extras folder (the ecosystem's short name for these)."""
        return self._save(self.images_dir("extras"), "", True, image, self._option("samples_format"),
                          infotext, {"extras": extras})

    def save_detected_map(self, image: Image.Image, mode: str, module: str) -> Path:
        """A ControlNet unit's detected map: NNNNN.png in the mode's samples folder's
        detected_maps/<preprocessor>/ (the ControlNet extension's place for them)."""
        folder = self.base_folder("samples", mode) / DETECTED_MAPS / (safe_name(module, self.name_limit) or "map")
        return self._save(folder, "", True, image, "png", None)

    def save_grid(self, images: list[Image.Image], mode: str, infotext: str | None,
                  fields: ImageFields | None = None) -> Path:
        return self.save_grid_image(make_grid(images), mode, infotext, fields)

    def save_grid_image(self, grid: Image.Image, mode: str, infotext: str | None,
                        fields: ImageFields | None = None) -> Path:
        """Save a grid already drawn (a script's labelled grid) where grids go."""
        folder = self.grids_dir(mode, None, fields)
        file_format = self._option("grid_format")
        with self._lock:
            path = folder / f"grid-{_next_number(folder, _GRID):04d}{SUFFIXES[file_format]}"
            return self._write(path, grid, file_format, infotext)

    def _save(self, folder: Path, name: str, numbered: bool, image: Image.Image, file_format: str,
              infotext: str | None, more_text: dict[str, str] | None = None) -> Path:
        suffix = SUFFIXES[file_format]
        with self._lock:
            if numbered or not name:
                number = f"{_next_number(folder, _NUMBERED):05d}"
                path = folder / (f"{number}-{name}{suffix}" if name else f"{number}{suffix}")
            else:  # the bare name, made unique rather than overwriting an earlier picture
                path, count = folder / f"{name}{suffix}", 0
                while path.exists() or path.with_suffix(".txt").exists():
                    count += 1
                    path = folder / f"{name}-{count}{suffix}"
            return self._write(path, image, file_format, infotext, more_text)

    def _write(self, path: Path, image: Image.Image, file_format: str, infotext: str | None,
               more_text: dict[str, str] | None = None) -> Path:
        if max(image.size) > _MAX_SIDE.get(file_format, max(image.size)):
            log.warning("%dx%d is too large for %s; saving as png", *image.size, file_format)
            file_format, path = "png", path.with_suffix(".png")
        # enable_pnginfo off: no parameters in the picture (the .txt beside it still has them).
        embedded = infotext if self._option("enable_pnginfo") else None
        data = image_bytes(image, file_format, embedded, self._option("jpeg_quality"),
                           self._option("webp_lossless"), more_text)
        write_atomically(path, data)
        if infotext and self._option("save_txt"):
            write_atomically(path.with_suffix(".txt"), infotext.encode("utf-8"))
        return path

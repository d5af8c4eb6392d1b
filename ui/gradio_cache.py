"""Gradio's file cache, written so that a picture is never served half-written.

Every picture the page shows (a gallery, an image field, a detected map) is encoded and saved by
Gradio under its cache folder as <hash of the bytes>/<name>.<format>, and the browser then fetches
that file. Gradio writes the file in place (truncate, then write) every time the picture is sent,
even when the same picture is already there. The same picture is sent again often here: "Send
to img2img", then to inpaint, then to extras, all within a second; a preview that equals the
result; Generate again with the same seed. Rewriting the file while the browser is still
fetching the previous copy makes the server answer with fewer or more bytes than it declared (an
"ASGI exception: Too much data for declared Content-Length" in the log) and leaves a broken
picture on the page.

So the cache is written once per content: a file already at its content-addressed path holds
those very bytes and is left alone; a new one is written to a temporary file beside it and
renamed into place, so a reader sees either no file or the whole file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gradio import processing_utils

TEMP_PREFIX = ".caching-"


def write_once(path: Path, data: bytes) -> None:
    """`data` at `path`, which is named after a hash of `data`: kept if already whole there,
    else written beside it and renamed into place (atomic for readers; no fsync: it is a cache)."""
    try:
        if path.stat().st_size == len(data):
            return
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """gradio.processing_utils.save_pil_to_cache, writing through write_once."""
    data = processing_utils.encode_pil_to_bytes(img, format)
    path = (Path(cache_dir) / processing_utils.hash_bytes(data) / f"{name}.{format}").resolve()
    write_once(path, data)
    return str(path)


def save_bytes_to_cache(data: bytes, file_name: str, cache_dir: str) -> str:
    """gradio.processing_utils.save_bytes_to_cache, writing through write_once."""
    if not Path(file_name).suffix:
        file_name = file_name + processing_utils.detect_audio_format(data)
    path = (Path(cache_dir) / processing_utils.hash_bytes(data) / Path(file_name).name).resolve()
    write_once(path, data)
    return str(path)


def install() -> None:
    """Route Gradio's cache writes through write_once (components call them through the
    processing_utils module, so replacing them there covers every component). Idempotent."""
    processing_utils.save_pil_to_cache = save_pil_to_cache
    processing_utils.save_bytes_to_cache = save_bytes_to_cache

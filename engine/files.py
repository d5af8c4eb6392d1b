"""Files the app writes and reads back: writes that a crash cannot leave half done, the clean-up
of a write a crash cut short, and the cache of model files' sha256.

A leaf of the engine (it imports nothing else of it), so every package can use it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".part"


def remove_unfinished(folder: Path, recursive: bool = True) -> int:
    """Delete the temporary files of writes a crash cut short (kill -9, power loss); the files
    they were going to replace are whole. Returns how many were removed."""
    removed = 0
    pattern = f"{TEMP_PREFIX}*{TEMP_SUFFIX}"
    for path in Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern):
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over `path`.

    A crash at any moment leaves either no file or the whole file, never a truncated image.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
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


class HashCache:
    """sha256 of model files, computed once and kept in cache.json keyed by path, size and mtime."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._entries = dict(data.get("hashes", {}))
            except (OSError, ValueError, AttributeError):
                log.warning("ignoring unreadable hash cache %s", self.path)

    def _key(self, file: Path) -> tuple[str, float, int]:
        stat = file.stat()
        return str(file.resolve()), stat.st_mtime, stat.st_size

    def cached(self, file: Path) -> str | None:
        try:
            key, mtime, size = self._key(file)
        except OSError:
            return None
        entry = self._entries.get(key)
        if entry and entry.get("mtime") == mtime and entry.get("size") == size:
            return entry.get("sha256")
        return None

    def sha256(self, file: Path) -> str:
        found = self.cached(file)
        if found:
            return found
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        key, mtime, size = self._key(file)
        with self._lock:
            self._entries[key] = {"mtime": mtime, "size": size, "sha256": value}
            self._save()
        return value

    def _save(self) -> None:
        data = json.dumps({"hashes": self._entries}, indent=1).encode("utf-8")
        try:
            write_atomically(self.path, data)
        except OSError as error:
            log.warning("could not write hash cache %s: %s", self.path, error)

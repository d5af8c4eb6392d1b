"""Recently used checkpoints kept in RAM, so switching back to one does not read its file again.

When the loaded checkpoint is switched away from, its LoadedModel (every module, any VAE it had
picked, its task pipelines) is set aside here, most recently used last. On a GPU its modules move
to CPU RAM first, so the GPU holds one model at a time; on the CPU they stay where they are.
Switching back to a cached checkpoint moves it to the device and it is the current model again:
nothing is read from disk and nothing is converted.

The cache is bounded twice: by the `sd_checkpoint_cache` setting (how many besides the loaded
one) and by free RAM: a model is only kept while the machine keeps `margin` bytes available, the
oldest going first. Every job's patches (LoRAs, ControlNets, memory modes, extensions) are undone
when it ends, so a model comes back from here exactly as it was left: as a fresh load.

Weights read from a .safetensors file on the CPU are the file's memory-mapped pages (see
engine/models/loading.py), which the kernel counts as reclaimable page cache: keeping such a model costs
little RAM that cannot be given back, and the free-RAM bound counts only what really is in use.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import psutil

from engine.devices import free_memory

log = logging.getLogger(__name__)

GIB = 1 << 30
# Room left for everything else (the OS, the browser, a generation's activations): keeping a
# model must never push a machine into swap, where every later step would crawl.
MIN_MARGIN = 2 * GIB
MARGIN_FRACTION = 0.1


def default_margin() -> int:
    return max(MIN_MARGIN, int(psutil.virtual_memory().total * MARGIN_FRACTION))


def available_ram() -> int:
    return psutil.virtual_memory().available


def key_of(info) -> tuple[str, str]:
    return info.kind, info.path


def file_signature(info) -> tuple | None:
    """What changes when a checkpoint's file is rewritten or replaced (None: it is gone).
    The inode is in it because a copy that keeps the time stamp (cp -p, rsync -a) and the size
    is still another file."""
    if info.kind == "builtin":
        return ()
    path = Path(info.path)
    try:
        if path.is_dir():  # a diffusers folder: any of its files
            return tuple(sorted((str(file.relative_to(path)), *_stat(file))
                                for file in path.rglob("*") if file.is_file()))
        return _stat(path)
    except OSError:
        return None


def _stat(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def size_on_disk(info) -> int:
    """The most RAM a cold load of `info` may hold at once, for making room before it: the
    weights' size as stored (a load never keeps two full copies, see engine/models/loading.py)."""
    path = Path(info.path)
    try:
        if info.kind == "builtin":
            return 0
        if path.is_dir():
            return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def model_bytes(modules) -> int:
    """The bytes of every tensor of these torch modules (each counted once)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


class CheckpointCache:
    """LoadedModels set aside, oldest first. Only the ModelManager (under its lock) changes it."""

    def __init__(self, limit: Callable[[], int] = lambda: 0, margin: int | None = None,
                 available: Callable[[], int] = available_ram):
        self._limit = limit
        self.margin = default_margin() if margin is None else margin
        self._available = available
        self._entries: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()  # titles() may be read from any thread

    @property
    def limit(self) -> int:
        return max(0, int(self._limit()))

    def titles(self) -> list[str]:
        """The cached checkpoints, least recently used first."""
        with self._lock:
            return [model.info.title for model in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, info) -> Any | None:
        """The cached model for `info`, removed from the cache; None if there is none, or if its
        file has changed since it was read (then it is dropped)."""
        with self._lock:
            model = self._entries.pop(key_of(info), None)
        if model is None:
            return None
        if model.signature != file_signature(info):
            log.info("%s changed on disk since it was cached: reading it again", info.title)
            del model
            free_memory()  # before the new copy is read
            return None
        return model

    def keep(self, model) -> bool:
        """Set `model` aside (moved to CPU RAM if it is on a GPU); False if it may not be kept
        (caching off, or not enough free RAM even with the cache emptied): then it is dropped."""
        limit = self.limit
        if limit == 0:
            self.clear()
            return False
        on_cpu = model.device.type == "cpu"
        cost = 0 if on_cpu else model_bytes(model.modules())  # on the CPU it is in RAM already
        self.trim(room_for=1, reserve=cost)
        if self._available() - cost < self.margin:
            log.info("not caching %s: it would leave less than %.1f GiB of RAM free",
                     model.info.title, self.margin / GIB)
            return False
        if not on_cpu:
            try:
                model.set_aside()
            except Exception:  # out of RAM after all, or a module that will not move: drop it
                log.warning("could not move %s to RAM; dropping it", model.info.title, exc_info=True)
                return False
        with self._lock:
            self._entries[key_of(model.info)] = model
        log.info("kept %s in RAM (%d cached)", model.info.title, len(self._entries))
        return True

    def trim(self, room_for: int = 0, reserve: int = 0) -> None:
        """Drop the least recently used models until at most `limit - room_for` are left and
        `reserve` more bytes could be used with the margin still free."""
        keep_at_most = max(0, self.limit - room_for)
        while self._entries and (len(self._entries) > keep_at_most or
                                 self._available() - reserve < self.margin):
            with self._lock:
                _, model = self._entries.popitem(last=False)
            log.info("dropped %s from the checkpoint cache", model.info.title)
            del model
            free_memory()

    def clear(self) -> None:
        with self._lock:
            dropped = len(self._entries)
            self._entries.clear()
        if dropped:
            log.info("emptied the checkpoint cache (%d dropped)", dropped)
            free_memory()

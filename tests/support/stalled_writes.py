"""Stop a process's atomic writes (engine.files.write_atomically, which images, config.json,
styles.csv and the hash cache go through) at a chosen point, so a test can kill the process
exactly there instead of hoping a kill lands inside a write.

Set in the environment of the process to stall, before engine.files writes anything:

    SD_STUDIO_TEST_STALL_WRITE="<point>:<file name pattern>:<n>"
    SD_STUDIO_TEST_STALL_MARKER=<a file path>

<point> is "inside-write" (the temporary file holds the first half of the bytes) or
"before-rename" (the temporary file is whole and flushed, the rename has not happened). The n-th
write whose target file name matches the pattern (fnmatch) stops there; from then on every later
write in any thread stops at the same point, as if the process had been killed at that moment.
Each stopped write adds a line to the marker file: {"temp": ..., "target": ..., "point": ...}.

Run the app under it with `python -m tests.support.stalled_writes app.py <flags>`; a test's own
child process calls `install_from_env()` itself.
"""

from __future__ import annotations

import fnmatch
import json
import os
import runpy
import sys
import threading
from pathlib import Path

STALL_ENV = "SD_STUDIO_TEST_STALL_WRITE"
MARKER_ENV = "SD_STUDIO_TEST_STALL_MARKER"
POINTS = ("inside-write", "before-rename")

_lock = threading.Lock()


class _StallingOs:
    """What engine.files sees as `os`: the real module, but for fdopen and replace."""

    def __init__(self, point: str, pattern: str, nth: int, marker: Path):
        self.point, self.pattern, self.nth, self.marker = point, pattern, nth, marker
        self.matched = 0
        self.stalled = False

    def __getattr__(self, name):
        return getattr(os, name)

    def _stops(self, target: str) -> bool:
        with _lock:
            if self.stalled:
                return True
            if fnmatch.fnmatch(Path(target).name, self.pattern):
                self.matched += 1
                if self.matched == self.nth:
                    self.stalled = True
                    return True
            return False

    def _stall(self, temp: str, target: str) -> None:
        with _lock:
            with open(self.marker, "a") as marker:
                marker.write(json.dumps({"temp": temp, "target": target, "point": self.point}) + "\n")
                marker.flush()
                os.fsync(marker.fileno())
        threading.Event().wait()  # until the process is killed

    def fdopen(self, fd, mode="r", *args, **kwargs):
        handle = os.fdopen(fd, mode, *args, **kwargs)
        if self.point != "inside-write":
            return handle
        return _HalfWriter(self, handle, os.readlink(f"/proc/self/fd/{fd}"))

    def replace(self, src, dst, *args, **kwargs):
        if self.point == "before-rename" and self._stops(str(dst)):
            self._stall(str(src), str(dst))
        return os.replace(src, dst, *args, **kwargs)


class _HalfWriter:
    """A temporary file that, for a write that is to stop, takes half the bytes and stops."""

    def __init__(self, stalling: _StallingOs, handle, temp: str):
        self._stalling, self._handle, self._temp = stalling, handle, temp

    def write(self, data: bytes) -> int:
        target = _target_of_current_write()
        if target is not None and self._stalling._stops(target):
            self._handle.write(data[: len(data) // 2])
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._stalling._stall(self._temp, target)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        self._handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)


_current = threading.local()


def _target_of_current_write() -> str | None:
    return getattr(_current, "target", None)


def install(point: str, pattern: str, nth: int, marker: Path) -> None:
    """Make engine.files' atomic writes stop as described in the module's docstring."""
    if point not in POINTS:
        raise ValueError(f"stall point must be one of {POINTS}, not {point!r}")
    from engine import files

    files.os = _StallingOs(point, pattern, nth, Path(marker))
    original = files.write_atomically

    def write_atomically(path, data):
        _current.target = str(path)  # which file the temporary file is for, for _HalfWriter
        try:
            return original(path, data)
        finally:
            _current.target = None

    # Everything imports it by name from engine.files (the writer, settings, styles, the hash
    # cache): install this before they are imported, so their name is bound to this one.
    files.write_atomically = write_atomically


def install_from_env() -> bool:
    rule = os.environ.get(STALL_ENV)
    if not rule:
        return False
    point, pattern, nth = rule.split(":")
    install(point, pattern, int(nth), Path(os.environ[MARKER_ENV]))
    return True


def stalled(marker: Path) -> list[dict]:
    """The writes stopped so far, in order."""
    if not Path(marker).exists():
        return []
    return [json.loads(line) for line in Path(marker).read_text().splitlines() if line.endswith("}")]


if __name__ == "__main__":
    # python -m tests.support.stalled_writes app.py <flags>: the app, with its writes stalling.
    install_from_env()
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")

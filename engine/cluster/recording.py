"""Saves a worker makes, recorded to be made again at the studio.

A worker's engine writes with a RecordingWriter: each save (picture, grid, detected map, a
script's grid, a copy before hires fix) is noted with its arguments, and the job's result gets a
stand-in path. The studio replays the notes with its own OutputWriter, in order, so the files get
the studio's folders, names and numbers, and swaps the stand-ins in the result for the real paths.
A job whose worker died has saved nothing anywhere: run again elsewhere, it saves once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.output.writer import OutputWriter

PENDING = "pending-save"  # stand-in paths look like pending-save/<job>/<n>

SAVE_METHODS = ("save_image", "save_extras", "save_detected_map", "save_grid", "save_grid_image")


@dataclass
class SaveNote:
    method: str  # one of SAVE_METHODS
    args: tuple
    kwargs: dict[str, Any]
    stand_in: Path


@dataclass
class Recording:
    notes: list[SaveNote] = field(default_factory=list)


class RecordingWriter(OutputWriter):
    """An OutputWriter that writes nothing: it notes each save under the running job's id.
    `current_job`: the id of the job running on this worker's lane now."""

    def __init__(self, root: Path, settings, current_job: Callable[[], str | None], name_limit: int | None = None):
        super().__init__(root, settings, **({"name_limit": name_limit} if name_limit else {}))
        self._current_job = current_job
        self._recordings: dict[str, Recording] = {}
        self._notes_lock = threading.Lock()

    def take(self, job_id: str) -> list[SaveNote]:
        """The saves the job made, handed over once."""
        with self._notes_lock:
            return self._recordings.pop(job_id, Recording()).notes

    def _note(self, method: str, args: tuple, kwargs: dict) -> Path:
        job_id = self._current_job() or "outside-a-job"
        with self._notes_lock:
            recording = self._recordings.setdefault(job_id, Recording())
            stand_in = Path(PENDING, job_id, str(len(recording.notes)))
            recording.notes.append(SaveNote(method, args, kwargs, stand_in))
        return stand_in

    def save_image(self, *args, **kwargs) -> Path:
        return self._note("save_image", args, kwargs)

    def save_extras(self, *args, **kwargs) -> Path:
        return self._note("save_extras", args, kwargs)

    def save_detected_map(self, *args, **kwargs) -> Path:
        return self._note("save_detected_map", args, kwargs)

    def save_grid(self, *args, **kwargs) -> Path:
        return self._note("save_grid", args, kwargs)

    def save_grid_image(self, *args, **kwargs) -> Path:
        return self._note("save_grid_image", args, kwargs)


def replay(notes: list[SaveNote], writer: OutputWriter) -> dict[Path, Path]:
    """Make the saves at the studio, in order; {stand-in: the file written}."""
    written = {}
    for note in notes:
        if note.method not in SAVE_METHODS:  # the notes come from another process: only these calls
            raise ValueError(f"not a save: {note.method}")
        written[note.stand_in] = getattr(writer, note.method)(*note.args, **note.kwargs)
    return written


def swap_paths(result, written: dict[Path, Path]):
    """The result's stand-in paths replaced by the files written at the studio."""
    if hasattr(result, "paths"):
        result.paths = [written.get(path, path) if path is not None else None for path in result.paths]
    for name in ("grid_path", "path"):
        value = getattr(result, name, None)
        if value is not None:
            setattr(result, name, written.get(value, value))
    return result

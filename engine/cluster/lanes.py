"""The studio's side of its workers: each is a lane of the job queue (engine/jobs.py).

A WorkerLane ships a job to its worker, mirrors the worker's progress and live preview into the
studio's Job (so the progress API, interrupt and skip work as with one GPU), and hands the result
to the job's `finish`, which saves it at the studio. A worker that stops answering makes the lane
raise WorkerLost: the queue puts the job back at its head and drops the lane.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Protocol

from engine.cluster.payload import WorkerInfo, affinity
from engine.jobs import Job, Lane, WorkerLost

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often a running job's progress is fetched from its worker


class WorkerClient(Protocol):
    """How the studio reaches a WorkerService: `call(method, *args)` returns what the method
    returns, raises what it raises, and raises WorkerLost when the worker is gone."""

    def call(self, method: str, *args) -> Any: ...

    def close(self) -> None: ...


class WorkerLane(Lane):
    def __init__(self, client: WorkerClient, info: WorkerInfo | None = None):
        self.client = client
        self.info: WorkerInfo = info or client.call("describe")
        self.name = self.info.name
        self._info_lock = threading.Lock()

    # Scheduling: read from the last description, never a call (the queue asks under its lock).
    def accepts(self, job: Job) -> bool:
        if job.remote is None or job.kind != "generate":
            return False
        info = self.info
        return job.remote.checkpoint.matches(info.checkpoints, info.titles) is not None

    def affinity(self, job: Job) -> int:
        info, wanted = self.info, job.remote.checkpoint
        loaded = info.loaded_sha256 == wanted.sha256 if wanted.sha256 else info.loaded == wanted.title
        return affinity(info.loaded is not None and loaded, bool(job.remote.loras) and job.remote.loras <= info.recent_loras)

    # Running.
    def execute(self, job: Job) -> None:
        job.run(self._run_remote)

    def _run_remote(self, job: Job) -> Any:
        self._set_state("busy")
        try:
            self._call("start", job.remote.payload(job.id))
            self._follow(job)
            result, notes, error = self._call("result", job.id)
        finally:
            self.refresh()
        if error is not None:
            raise error
        return job.remote.finish(result, notes)

    def _follow(self, job: Job) -> None:
        """Mirror the worker's progress until the job ends there; pass on interrupt and skip."""
        seen, told_interrupt, told_skip = 0, False, False
        while True:
            if job.interrupted and not told_interrupt:
                self._call("interrupt", job.id)
                told_interrupt = True
            if job.skipped and not told_skip:
                self._call("skip", job.id)
                told_skip = True
            status = self._call("poll", job.id, seen)
            job.mirror(status["step"], status["total_steps"], status["batch_index"], status["batch_count"],
                       status["textinfo"])
            if status["preview"] is not None:
                job.set_preview(status["preview"])
                seen = status["preview_id"]
            if status["done"]:
                return
            time.sleep(POLL_SECONDS)

    def _call(self, method: str, *args) -> Any:
        return self.client.call(method, *args)

    def refresh(self) -> WorkerInfo:
        """Ask the worker again what it has loaded and holds."""
        try:
            info = self.client.call("describe")
        except WorkerLost:
            self._set_state("lost")
            raise
        with self._info_lock:
            self.info = info
        return info

    def _set_state(self, state: str) -> None:
        with self._info_lock:
            self.info.state = state

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # a worker already gone has nothing to close
            log.debug("closing worker %s", self.name, exc_info=True)


class StudioLane(Lane):
    """The studio's own process: checkpoint switches, upscales and, when it has a GPU to spare
    (`generates`), generations on its own loaded model."""

    name = "studio"

    def __init__(self, generates: bool, loaded: Callable[[], tuple[str, str | None] | None]):
        self.generates = generates
        self._loaded = loaded  # (title, sha256) of the studio's loaded checkpoint, or None

    def accepts(self, job: Job) -> bool:
        return job.kind != "generate" or self.generates

    def affinity(self, job: Job) -> int:
        if job.remote is None:
            return 0
        loaded, wanted = self._loaded(), job.remote.checkpoint
        return affinity(loaded is not None and (loaded[0] == wanted.title or
                                                (wanted.sha256 is not None and loaded[1] == wanted.sha256)), False)

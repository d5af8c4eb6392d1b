"""A worker: one engine on one GPU, running the jobs the studio sends it.

The same class runs in the studio's process (another GPU of this machine) and as a Ray actor
(a GPU elsewhere); the studio calls `start`, then `poll` until the job is done, then `result`.
Its engine's writer is a RecordingWriter, so the worker writes no picture: the saves go back
with the result.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from typing import Any

from engine.cluster.payload import JobPayload, WorkerInfo, loras_of, portable_error
from engine.cluster.recording import RecordingWriter
from engine.errors import UserError

log = logging.getLogger(__name__)

RESCAN_SECONDS = 30.0  # how stale a worker's list of its checkpoint files may be
RECENT_LORAS = 32  # LoRA names of the last jobs a worker reports (their files are in its page cache)


class WorkerService:
    def __init__(self, engine, name: str, device: str):
        if not isinstance(engine.writer, RecordingWriter):
            raise TypeError("a worker's engine must write with a RecordingWriter")
        self.engine = engine
        self.name = name
        self.device = device
        self._jobs: dict[str, Any] = {}  # studio job id -> (checkpoint switch or None, generation)
        self._lock = threading.Lock()
        self.jobs_done = 0
        self._recent_loras: collections.deque = collections.deque(maxlen=RECENT_LORAS)
        self._scanned = -RESCAN_SECONDS  # when the checkpoint folders were last read

    # The studio's calls.
    def describe(self) -> WorkerInfo:
        registry = self.engine.models.registry
        checkpoints, titles = self._checkpoints()
        current = self.engine.models.current
        loaded = registry.with_hash(current.info) if current is not None else None
        with self._lock:
            running = [job for _, job in self._jobs.values() if not job.done]
        loading = self.engine.pending_load() is not None
        return WorkerInfo(self.name, socket.gethostname(), self.device, os.getpid(),
                          loaded.title if loaded else None, loaded.sha256 if loaded else None,
                          "loading" if loading else "busy" if running else "idle", checkpoints,
                          frozenset(titles), self.jobs_done,
                          frozenset(self._recent_loras))

    def start(self, payload: JobPayload) -> None:
        """Queue the job on this worker's lane (after a checkpoint switch if it needs one)."""
        engine = self.engine
        own = payload.checkpoint.matches(*self._checkpoints())
        if own is None:
            raise UserError(f"Worker {self.name} has no checkpoint {payload.checkpoint.title} "
                            f"(sha256 {payload.checkpoint.sha256})")
        current = engine.models.current
        switch = None
        if current is None or current.info.title != own or (
                payload.modules is not None and current.modules_choice != payload.modules):
            switch = engine.load_checkpoint(own, owner=payload.owner, modules=payload.modules, remember=False)
        overrides = {**payload.settings, **payload.overrides}
        job = engine.submit(payload.request, owner=payload.owner, job_id=payload.job_id,
                            make_grid=payload.make_grid, overrides=overrides)
        with self._lock:
            self._jobs[payload.job_id] = (switch, job)
            self._recent_loras.extend(loras_of(payload.request))

    def poll(self, job_id: str, preview_seen: int = 0) -> dict[str, Any]:
        """The job's progress; its live preview when newer than `preview_seen`."""
        switch, job = self._job(job_id)
        textinfo = job.textinfo
        if switch is not None and not switch.done:
            textinfo = switch.textinfo or "Loading the checkpoint"
        snapshot = job.snapshot()
        preview = job.preview if job.preview_id > preview_seen else None
        return {"state": job.state, "done": job.done, "step": snapshot.step, "total_steps": snapshot.total_steps,
                "batch_index": snapshot.batch_index, "batch_count": snapshot.batch_count,
                "textinfo": textinfo, "preview_id": job.preview_id, "preview": preview}

    def result(self, job_id: str) -> tuple[Any, list, BaseException | None]:
        """(result, the saves it made, None) or (None, [], the error); the job is forgotten."""
        switch, job = self._job(job_id)
        job.wait()
        with self._lock:
            self._jobs.pop(job_id, None)
            self.jobs_done += 1
        notes = self.engine.writer.take(job_id)
        failure = next((j.error for j in (switch, job) if j is not None and j.error is not None), None)
        if failure is not None:
            return None, [], portable_error(failure)
        return job.result, notes, None

    def interrupt(self, job_id: str) -> None:
        _, job = self._job(job_id)
        job.interrupt()
        self.engine.queue.cancel(job)

    def skip(self, job_id: str) -> None:
        self._job(job_id)[1].skip()

    def _checkpoints(self) -> tuple[dict[str, str], set[str]]:
        """{sha256: title} and the titles of this worker's checkpoints. The folders are read again
        at most every RESCAN_SECONDS (the studio asks for a description every few seconds)."""
        registry = self.engine.models.registry
        now = time.monotonic()
        if now - self._scanned >= RESCAN_SECONDS:
            registry.refresh()
            self._scanned = now
        checkpoints = {}
        for info in registry.checkpoints:
            hashed = registry.with_hash(info)  # read once per file; cached on disk
            if hashed.sha256:
                checkpoints.setdefault(hashed.sha256, hashed.title)
        return checkpoints, {info.title for info in registry.checkpoints}

    def _job(self, job_id: str):
        with self._lock:
            found = self._jobs.get(job_id)
        if found is None:
            raise UserError(f"Worker {self.name} has no job {job_id}")
        return found

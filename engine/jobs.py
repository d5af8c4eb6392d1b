"""Jobs and the one GPU lane they share.

Every piece of GPU work (a generation from the UI or the API, a checkpoint switch) is a `Job` run
by a single worker thread, one at a time, in the order they arrived. A job carries its progress,
its latest preview and its interrupt/skip flags; the pipeline's step callback reads the flags,
so stopping never kills a thread.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from .errors import QueueFullError, UserError

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True)
class ProgressSnapshot:
    job_id: str
    state: str
    step: int
    total_steps: int
    batch_index: int
    batch_count: int
    elapsed: float
    eta: float | None
    textinfo: str
    queue_position: int | None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


class Job:
    """One unit of GPU work, its progress and its controls."""

    def __init__(self, work: Callable[["Job"], Any], owner: str = "", kind: str = "generate",
                 job_id: str | None = None, description: str = ""):
        self.id = job_id or uuid.uuid4().hex[:16]
        self.owner = owner
        self.kind = kind
        self.description = description
        self._work = work
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.state = QUEUED
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.step = 0
        self.total_steps = 0
        self.batch_index = 0
        self.batch_count = 1
        self.textinfo = ""
        self.preview = None  # latest live preview (PIL image) or None
        self.preview_id = 0
        self.interrupted = False
        self.skipped = False
        self.result: Any = None
        self.error: BaseException | None = None

    # Controls, called from other threads.
    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    @property
    def should_stop_sampling(self) -> bool:
        return self.interrupted or self.skipped

    # Progress, written by the worker.
    def set_total(self, total_steps: int, batch_count: int | None = None) -> None:
        with self._lock:
            self.total_steps = max(1, total_steps)
            if batch_count is not None:
                self.batch_count = batch_count

    def advance(self, steps: int = 1) -> None:
        with self._lock:
            self.step = min(self.step + steps, self.total_steps)

    def set_preview(self, image) -> None:
        with self._lock:
            self.preview = image
            self.preview_id += 1

    def snapshot(self, queue_position: int | None = None) -> ProgressSnapshot:
        with self._lock:
            now = time.time()
            elapsed = now - self.started_at if self.started_at else 0.0
            eta = None
            if self.step and self.total_steps:
                eta = elapsed / self.step * (self.total_steps - self.step)
            return ProgressSnapshot(self.id, self.state, self.step, self.total_steps,
                                    self.batch_index, self.batch_count, elapsed, eta,
                                    self.textinfo, queue_position)

    # Completion.
    def run(self) -> None:
        self.state = RUNNING
        self.started_at = time.time()
        try:
            self.result = self._work(self)
            self.state = DONE
        except BaseException as error:  # the worker must survive anything a job does
            self.error = error
            self.state = FAILED
            if not isinstance(error, UserError):
                log.exception("job %s failed", self.id)
        finally:
            self.finished_at = time.time()
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def outcome(self) -> Any:
        """The job's result, or its error raised again in the caller's thread."""
        self._done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class JobQueue:
    """First come, first served; one worker thread runs every job."""

    def __init__(self, name: str = "gpu-lane", max_waiting: int | None = None):
        self.max_waiting = max_waiting  # None: no limit
        self._pending: "queue.Queue[Job | None]" = queue.Queue()
        self._waiting: list[Job] = []
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self.current: Job | None = None
        self.jobs_done = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        """Queue the job, or raise QueueFullError when --queue-size jobs are waiting already."""
        with self._lock:
            if self.max_waiting is not None and len(self._waiting) >= self.max_waiting:
                raise QueueFullError(
                    f"The queue is full: {len(self._waiting)} jobs are waiting (the limit is "
                    f"{self.max_waiting}, set by --queue-size). Try again when some have finished.")
            self._waiting.append(job)
        self._pending.put(job)
        return job

    def position(self, job: Job) -> tuple[int, int] | None:
        """(1-based place, number waiting) while the job waits; None once it runs."""
        with self._lock:
            if job in self._waiting:
                return self._waiting.index(job) + 1, len(self._waiting)
        return None

    def queued_count(self) -> int:
        with self._lock:
            return len(self._waiting)

    def find(self, job_id: str) -> Job | None:
        return next((job for job in self._all() if job.id == job_id), None)

    def _all(self) -> list[Job]:
        with self._lock:
            return ([self.current] if self.current else []) + list(self._waiting)

    def jobs_of(self, owner: str) -> list[Job]:
        return [job for job in self._all() if job.owner == owner]

    def jobs_of_kind(self, kind: str) -> list[Job]:
        return [job for job in self._all() if job.kind == kind]

    def shutdown(self) -> None:
        self._pending.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            job = self._pending.get()
            if job is None:
                return
            with self._lock:
                self._waiting.remove(job)
                self.current = job
            if job.interrupted:  # stopped while waiting: never started
                job.state = DONE
                job._done.set()
            else:
                job.run()
            with self._lock:
                self.current = None
                self.jobs_done += 1

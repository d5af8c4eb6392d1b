"""Jobs and the one GPU lane they share.

Every piece of GPU work (a generation from the UI or the API, a checkpoint switch) is a `Job` run
by a single worker thread, one at a time. Each job has an owner (a browser session, an API user);
the lane takes owners in turn, so one owner's long list of jobs cannot starve another's single
job. A job carries its progress, its latest preview and its interrupt/skip flags; the pipeline's
step callback reads the flags, so stopping never kills a thread.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from engine.errors import QueueFullError, UserError

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
                 job_id: str | None = None, description: str = "",
                 if_stopped_early: Callable[[], Any] | None = None):
        self.id = job_id or uuid.uuid4().hex[:16]
        self.owner = owner
        self.kind = kind
        self.description = description
        self._work = work
        # The result of a job interrupted before it started (a generation's "no images yet"),
        # so its caller gets an answer of the usual shape rather than None.
        self._if_stopped_early = if_stopped_early
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
        self._parts: tuple[int, int, int] | None = None  # a script's (parts, started, step at start)
        self.textinfo = ""
        self._preview = None  # latest live preview: an image, or a callable that makes it
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
        """The steps of the run starting now. Within a script's planned parts: the steps done
        so far plus this part's steps for it and every part still to come (the estimate)."""
        with self._lock:
            if self._parts is not None:
                count, started, part_start = self._parts
                self.total_steps = max(1, part_start + total_steps * (count - started + 1))
                self.batch_index, self.batch_count = started - 1, count
                return
            self.total_steps = max(1, total_steps)
            if batch_count is not None:
                self.batch_count = batch_count

    def set_batch(self, index: int) -> None:
        """The batch now sampling (within a script, the display counts the script's parts)."""
        with self._lock:
            if self._parts is None:
                self.batch_index = index

    def plan_parts(self, count: int) -> None:
        """A script will run `count` jobs inside this one: progress spans them all."""
        with self._lock:
            self._parts = (max(1, count), 0, self.step)

    def next_part(self) -> None:
        with self._lock:
            if self._parts is not None:
                count, started, _ = self._parts
                self._parts = (max(count, started + 1), started + 1, self.step)

    def advance(self, steps: int = 1) -> None:
        with self._lock:
            self.step = min(self.step + steps, self.total_steps)

    def set_preview(self, image) -> None:
        """`image`: a PIL image, or a callable returning one (called when someone looks, on
        their thread, so that making it never holds up the worker)."""
        with self._lock:
            self._preview = image
            self.preview_id += 1

    @property
    def preview(self):
        """The latest live preview (a PIL image) or None."""
        with self._lock:
            pending = self._preview
        if not callable(pending):
            return pending
        image = pending()
        with self._lock:
            if self._preview is pending:
                self._preview = image
        return image

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
            # Imported here, so the queue alone loads no torch. Out of memory: a message saying
            # what to change, and the job's memory given back.
            from engine.memory.memory_guard import as_user_error

            self.error = error = as_user_error(error)
            self.state = FAILED
            if not isinstance(error, UserError):
                log.exception("job %s failed", self.id)
        finally:
            self.finished_at = time.time()
            self._done.set()

    def finish_unstarted(self) -> None:
        """End a job that was stopped while it waited; its work never runs."""
        try:
            self.result = self._if_stopped_early() if self._if_stopped_early else None
        except BaseException as error:  # e.g. no model to describe the empty result with
            self.error = error
        self.state = FAILED if self.error is not None else DONE
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


# Jobs of these kinds change the model every later job runs with, so they keep their place: each
# runs after every job submitted before it and before every job submitted after it.
BARRIER_KINDS = frozenset({"load", "unload"})
FINISHED_KEPT = 256  # ids of ended jobs remembered, for /internal/progress's "completed"


class JobQueue:
    """One worker thread runs every job: first come, first served within an owner, owners in turn.

    Fairness is start-time fair queueing: a job's tag is one more than the later of the tag of the
    job running now and the owner's last waiting job, and jobs run in tag order (ties: the earlier
    submitted). An owner who queues ten jobs gets tags 1..10; another who then queues one gets the
    tag after the running job's, so it runs second or third, not eleventh. Tags are fixed when a
    job is submitted, so a waiting job only moves back when another owner's job takes a turn it
    is owed. Checkpoint switches split the queue into segments that run one after the other.
    """

    def __init__(self, name: str = "gpu-lane", max_waiting: int | None = None):
        self.max_waiting = max_waiting  # None: no limit
        self._waiting: list[Job] = []  # in the order they will run
        self._keys: dict[Job, tuple[int, float, int]] = {}  # (segment, tag, submit order)
        self._segment = 0  # jobs submitted now go in this segment, after every barrier so far
        self._clock = 0.0  # tag of the job that started last
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._closing = False
        self._counter = itertools.count()
        self.current: Job | None = None
        self.jobs_done = 0
        self._finished: collections.deque[str] = collections.deque(maxlen=FINISHED_KEPT)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        """Queue the job, or raise QueueFullError when --queue-size jobs are waiting already."""
        with self._lock:
            if self.max_waiting is not None and len(self._waiting) >= self.max_waiting:
                raise QueueFullError(
                    f"The queue is full: {len(self._waiting)} jobs are waiting (the limit is "
                    f"{self.max_waiting}, set by --queue-size). Try again when some have finished.")
            if job.kind in BARRIER_KINDS:
                key = (self._segment, math.inf, next(self._counter))
                self._segment += 1
            else:
                backlog = [self._keys[other][1] for other in self._waiting
                           if other.owner == job.owner and other.kind not in BARRIER_KINDS]
                key = (self._segment, max([self._clock, *backlog]) + 1, next(self._counter))
            self._keys[job] = key
            bisect.insort(self._waiting, job, key=self._keys.__getitem__)
            self._ready.notify()
        return job

    def cancel(self, job: Job) -> bool:
        """Take a waiting job off the queue and end it unstarted. False if it is not waiting."""
        with self._lock:
            if job not in self._waiting:
                return False
            self._waiting.remove(job)
            del self._keys[job]
            self._finished.append(job.id)
        job.finish_unstarted()
        return True

    def position(self, job: Job) -> tuple[int, int] | None:
        """(1-based place in the run order, number waiting) while the job waits; None once it runs."""
        with self._lock:
            if job in self._waiting:
                return self._waiting.index(job) + 1, len(self._waiting)
        return None

    def queued_count(self) -> int:
        with self._lock:
            return len(self._waiting)

    def find(self, job_id: str) -> Job | None:
        return next((job for job in self._all() if job.id == job_id), None)

    def finished(self, job_id: str) -> bool:
        """Whether a job of this id ended lately (the last FINISHED_KEPT jobs are remembered)."""
        with self._lock:
            return job_id in self._finished

    def _all(self) -> list[Job]:
        """The running job, then the waiting ones in the order they will run."""
        with self._lock:
            return ([self.current] if self.current else []) + list(self._waiting)

    def jobs_of(self, owner: str) -> list[Job]:
        return [job for job in self._all() if job.owner == owner]

    def jobs_of_kind(self, kind: str) -> list[Job]:
        return [job for job in self._all() if job.kind == kind]

    def shutdown(self) -> None:
        """Stop once the jobs already waiting have run (for at most 5 s here)."""
        with self._lock:
            self._closing = True
            self._ready.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._ready.wait()
                if not self._waiting:
                    return
                job = self._waiting.pop(0)
                tag = self._keys.pop(job)[1]
                if tag != math.inf:
                    self._clock = tag
                self.current = job
            if job.interrupted:  # stopped between the interrupt and its cancel
                job.finish_unstarted()
            else:
                job.run()
            with self._lock:
                self.current = None
                self.jobs_done += 1
                self._finished.append(job.id)

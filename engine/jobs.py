"""Jobs and the lanes they run on.

Every piece of GPU work (a generation from the UI or the API, a checkpoint switch) is a `Job`.
A lane runs one job at a time: with one GPU there is one lane, the studio's own; with several
GPUs or a cluster (engine/cluster) each worker is a lane too. Each job has an owner (a browser
session, an API user); the queue takes owners in turn, so one owner's long list of jobs cannot
starve another's single job. A job carries its progress, its latest preview and its
interrupt/skip flags; the pipeline's step callback reads the flags, so stopping never kills a
thread.
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


class WorkerLost(Exception):
    """The worker running a job stopped (its process or machine died): the job goes back to the
    head of the queue and runs on another lane."""


class Job:
    """One unit of GPU work, its progress and its controls.

    `remote`: what a worker elsewhere needs to run the job (engine/cluster's RemoteWork); None
    when only the studio's own lane can run it (a checkpoint switch, an upscale)."""

    def __init__(self, work: Callable[["Job"], Any], owner: str = "", kind: str = "generate",
                 job_id: str | None = None, description: str = "",
                 if_stopped_early: Callable[[], Any] | None = None, remote: Any = None):
        self.id = job_id or uuid.uuid4().hex[:16]
        self.owner = owner
        self.kind = kind
        self.description = description
        self._work = work
        self.remote = remote
        self.lane_name = ""  # the lane running it (or that ran it last)
        self.retries = 0  # times it went back to the queue because its worker stopped
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

    def mirror(self, step: int, total_steps: int, batch_index: int, batch_count: int, textinfo: str) -> None:
        """Progress as a worker elsewhere reports it for this job."""
        with self._lock:
            self.total_steps, self.step = max(1, total_steps), min(step, max(1, total_steps))
            self.batch_index, self.batch_count, self.textinfo = batch_index, batch_count, textinfo

    # Completion.
    def run(self, work: Callable[["Job"], Any] | None = None) -> None:
        """Run the job's work (or `work`, a lane's way of running it elsewhere). WorkerLost
        passes through with the job made waiting again, for the queue to run it elsewhere."""
        self.state = RUNNING
        self.started_at = time.time()
        try:
            self.result = (work or self._work)(self)
            self.state = DONE
        except WorkerLost as lost:
            with self._lock:
                self.state, self.step, self.started_at, self._preview = QUEUED, 0, None, None
                self.retries += 1
                self.textinfo = f"Retrying on another GPU: {lost}"
            raise
        except BaseException as error:  # the worker must survive anything a job does
            # Imported here, so the queue alone loads no torch. Out of memory: a message saying
            # what to change, and the job's memory given back.
            from engine.memory.memory_guard import as_user_error

            self.error = error = as_user_error(error)
            self.state = FAILED
            if not isinstance(error, UserError):
                log.exception("job %s failed", self.id)
        if self.state != QUEUED:
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

    def fail(self, error: BaseException) -> None:
        """End the job with `error` (its lane could not run it)."""
        self.error, self.state, self.finished_at = error, FAILED, time.time()
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


class Lane:
    """Somewhere jobs run, one at a time. This one is the studio's own process: it runs every
    job as the job says. Workers (engine/cluster) run the jobs they accept elsewhere."""

    name = "studio"

    def accepts(self, job: Job) -> bool:
        """Whether this lane can run the job at all."""
        return True

    def affinity(self, job: Job) -> int:
        """How well suited this lane is (e.g. 2: the job's checkpoint is loaded here); among
        idle lanes that accept a job, one with the highest affinity takes it."""
        return 0

    def execute(self, job: Job) -> None:
        """Run the job here; WorkerLost if the worker stopped under it."""
        job.run()

    def close(self) -> None:
        """The lane leaves the queue (the studio shuts down, or its worker stopped)."""


class JobQueue:
    """Lanes run the jobs: first come, first served within an owner, owners in turn.

    Fairness is start-time fair queueing: a job's tag is one more than the later of the tag of the
    job started last and the owner's last waiting job, and jobs start in tag order (ties: the
    earlier submitted). An owner who queues ten jobs gets tags 1..10; another who then queues one
    gets the tag after the running job's, so it runs second or third, not eleventh. Tags are fixed
    when a job is submitted, so a waiting job only moves back when another owner's job takes a
    turn it is owed. Checkpoint switches split the queue into segments that run one after the
    other: a switch starts when every job before it has ended, and no job after it starts before
    it ends.

    With several lanes, an idle lane takes the first job in that order that it accepts, unless
    another idle lane is better suited to it (has its checkpoint loaded); a job no lane accepts
    waits, with a note saying why, until one joins.
    """

    def __init__(self, name: str = "gpu-lane", max_waiting: int | None = None, lanes: list[Lane] | None = None):
        self.name = name
        self.max_waiting = max_waiting  # None: no limit
        self._waiting: list[Job] = []  # in the order they will run
        self._keys: dict[Job, tuple[int, float, int]] = {}  # (segment, tag, submit order)
        self._segment = 0  # jobs submitted now go in this segment, after every barrier so far
        self._clock = 0.0  # tag of the job that started last
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._closing = False
        self._counter = itertools.count()
        self._lanes: list[Lane] = []
        self._running: dict[Lane, Job] = {}
        self._threads: dict[Lane, threading.Thread] = {}
        # Why a job no lane accepts is waiting (set by whoever adds worker lanes).
        self.no_lane_note: Callable[[Job], str] = lambda job: "Waiting for a lane that can run this job"
        self.jobs_done = 0
        self._finished: collections.deque[str] = collections.deque(maxlen=FINISHED_KEPT)
        for lane in lanes if lanes is not None else [Lane()]:
            self.add_lane(lane)

    # Lanes.
    def add_lane(self, lane: Lane) -> None:
        """A lane joins: it starts taking the jobs it accepts (waiting ones included)."""
        with self._lock:
            if self._closing:
                return
            self._lanes.append(lane)
            thread = threading.Thread(target=self._loop, args=(lane,), name=f"{self.name}:{lane.name}", daemon=True)
            self._threads[lane] = thread
            self._ready.notify_all()
        thread.start()

    def remove_lane(self, lane: Lane) -> None:
        """A lane leaves; a job it runs now finishes (or comes back, if its worker died)."""
        with self._lock:
            if lane in self._lanes:
                self._lanes.remove(lane)
            self._note_unplaceable()
            self._ready.notify_all()
        lane.close()

    @property
    def lanes(self) -> list[Lane]:
        with self._lock:
            return list(self._lanes)

    def _note_unplaceable(self) -> None:
        for job in self._waiting:
            if job.kind not in BARRIER_KINDS and not any(lane.accepts(job) for lane in self._lanes):
                job.textinfo = self.no_lane_note(job)

    # Jobs.
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
            self._queue(job, key)
            if job.kind not in BARRIER_KINDS and not any(lane.accepts(job) for lane in self._lanes):
                job.textinfo = self.no_lane_note(job)
        return job

    def _queue(self, job: Job, key: tuple[int, float, int]) -> None:
        self._keys[job] = key
        bisect.insort(self._waiting, job, key=self._keys.__getitem__)
        self._ready.notify_all()

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

    @property
    def current(self) -> Job | None:
        """A running job (the first lane's, when several run)."""
        running = self.running()
        return running[0] if running else None

    def running(self) -> list[Job]:
        """The jobs running now, in lane order."""
        with self._lock:
            listed = [self._running[lane] for lane in self._lanes if lane in self._running]
            return listed + [job for lane, job in self._running.items() if lane not in self._lanes]

    def find(self, job_id: str) -> Job | None:
        return next((job for job in self._all() if job.id == job_id), None)

    def finished(self, job_id: str) -> bool:
        """Whether a job of this id ended lately (the last FINISHED_KEPT jobs are remembered)."""
        with self._lock:
            return job_id in self._finished

    def _all(self) -> list[Job]:
        """The running jobs, then the waiting ones in the order they will run."""
        running = self.running()
        with self._lock:
            return running + list(self._waiting)

    def jobs_of(self, owner: str) -> list[Job]:
        return [job for job in self._all() if job.owner == owner]

    def jobs_of_kind(self, kind: str) -> list[Job]:
        return [job for job in self._all() if job.kind == kind]

    def shutdown(self) -> None:
        """Stop once the jobs already waiting have run (for at most 5 s here)."""
        with self._lock:
            self._closing = True
            self._ready.notify_all()
            threads, lanes = list(self._threads.values()), list(self._lanes)
        deadline = time.monotonic() + 5
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for lane in lanes:
            lane.close()

    # The lanes' threads.
    def _pick(self, lane: Lane) -> Job | None:
        """The job `lane` starts now, if any (called with the lock held)."""
        if any(job.kind in BARRIER_KINDS for job in self._running.values()):
            return None  # a checkpoint switch runs alone
        idle = [other for other in self._lanes if other not in self._running and other is not lane]
        for job in self._waiting:
            if job.kind in BARRIER_KINDS:
                # Only after every job before it has ended; nothing after it starts first.
                if job is self._waiting[0] and not self._running and lane.accepts(job):
                    return job
                return None
            if not lane.accepts(job):
                continue
            mine = lane.affinity(job)
            if any(other.accepts(job) and other.affinity(job) > mine for other in idle):
                continue  # left for the better-suited idle lane
            return job
        return None

    def _loop(self, lane: Lane) -> None:
        while True:
            with self._lock:
                job = None
                while lane in self._lanes:
                    job = self._pick(lane)
                    if job is not None or (self._closing and not self._waiting):
                        break
                    if self._closing and not any(lane.accepts(other) for other in self._waiting):
                        break
                    self._ready.wait()
                if job is None:
                    self._threads.pop(lane, None)
                    return
                self._waiting.remove(job)
                key = self._keys.pop(job)
                if key[1] != math.inf:
                    self._clock = max(self._clock, key[1])
                self._running[lane] = job
                job.lane_name = lane.name
            lost = False
            try:
                if job.interrupted:  # stopped between the interrupt and its cancel
                    job.finish_unstarted()
                else:
                    lane.execute(job)
            except WorkerLost:
                lost = True
            except Exception as error:  # a lane's own fault must not stop the queue; the job says what failed
                log.exception("lane %s failed running job %s", lane.name, job.id)
                if not job.done:
                    job.fail(UserError(f"The job could not run on {lane.name}: {type(error).__name__}: {error}"))
            with self._lock:
                del self._running[lane]
                if lost:
                    # Back to the head of the queue, ahead of every job submitted after it.
                    self._queue(job, (key[0], -float(job.retries), key[2]))
                    if lane in self._lanes:
                        self._lanes.remove(lane)
                    self._note_unplaceable()
                else:
                    self.jobs_done += 1
                    self._finished.append(job.id)
                self._ready.notify_all()
            if lost:
                log.warning("job %s goes back to the queue: lane %s stopped", job.id, lane.name)
                lane.close()
                with self._lock:
                    self._threads.pop(lane, None)
                return

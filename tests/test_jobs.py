"""The GPU lane: one job at a time, in order, surviving failures."""

import threading

import pytest

from engine.errors import RequestError
from engine.jobs import DONE, FAILED, Job, JobQueue


@pytest.fixture
def lane():
    queue = JobQueue()
    yield queue
    queue.shutdown()


def test_jobs_run_one_at_a_time_in_order(lane):
    order, running = [], []
    gate = threading.Event()

    def work(name):
        def run(job):
            running.append(name)
            assert len(running) == 1, "two jobs ran at once"
            if name == "first":
                gate.wait(5)
            order.append(name)
            running.remove(name)
            return name
        return run

    jobs = [lane.submit(Job(work(name))) for name in ("first", "second", "third")]
    while lane.current is not jobs[0]:
        threading.Event().wait(0.01)
    assert lane.position(jobs[2]) == (2, 2)
    gate.set()
    assert [job.outcome() for job in jobs] == ["first", "second", "third"]
    assert order == ["first", "second", "third"]


def test_a_failing_job_does_not_stop_the_lane(lane):
    def boom(job):
        raise RuntimeError("kaput")

    failed = lane.submit(Job(boom))
    ok = lane.submit(Job(lambda job: 42))
    assert ok.outcome() == 42
    assert failed.state == FAILED
    with pytest.raises(RuntimeError, match="kaput"):
        failed.outcome()


def test_user_errors_come_back_to_the_caller(lane):
    def refuse(job):
        raise RequestError("width must be a multiple of 8", "width")

    job = lane.submit(Job(refuse))
    with pytest.raises(RequestError) as caught:
        job.outcome()
    assert caught.value.field == "width"


def test_a_job_interrupted_while_waiting_never_starts(lane):
    gate = threading.Event()
    started = []
    blocker = lane.submit(Job(lambda job: gate.wait(5)))
    waiting = lane.submit(Job(lambda job: started.append(1)))
    waiting.interrupt()
    gate.set()
    blocker.wait(5)
    waiting.wait(5)
    assert waiting.state == DONE and started == []


def test_progress_snapshot_and_eta():
    job = Job(lambda job: None)
    job.set_total(10)
    job.started_at = 100.0
    job.advance(4)
    snap = job.snapshot()
    assert snap.fraction == 0.4 and snap.step == 4 and snap.total_steps == 10
    assert snap.eta is not None and snap.eta >= 0

"""The GPU lane's order: first come, first served within an owner, owners in turn, and a
checkpoint switch in the place it was asked for. Real jobs on a real JobQueue."""

import threading

import pytest

from engine.errors import QueueFullError
from engine.jobs import DONE, Job, JobQueue
from engine.request import GenerationRequest


@pytest.fixture
def lane():
    queue = JobQueue()
    yield queue
    queue.shutdown()


class Recorder:
    """Makes jobs that note when they start; the first one holds the lane until released."""

    def __init__(self, lane: JobQueue):
        self.lane = lane
        self.started: list[str] = []
        self.gate = threading.Event()

    def job(self, name: str, owner: str, kind: str = "generate", **options) -> Job:
        def work(job):
            self.started.append(name)
            return name
        return self.lane.submit(Job(work, owner=owner, kind=kind, description=name, **options))

    def hold(self, owner: str) -> Job:
        """A running job of `owner` that keeps everything else waiting until `release`."""
        def work(job):
            self.started.append("hold")
            self.gate.wait(10)
        held = self.lane.submit(Job(work, owner=owner, description="hold"))
        while self.lane.current is not held:
            threading.Event().wait(0.01)
        return held

    def release(self, *jobs: Job) -> list[str]:
        self.gate.set()
        for job in jobs:
            assert job.wait(10)
        return self.started

    def order(self) -> list[str]:
        """The names waiting, in the order the lane will run them."""
        return [job.description for job in self.lane._all() if job is not self.lane.current]


def test_one_owners_ten_jobs_do_not_starve_anothers_single_job(lane):
    jobs = Recorder(lane)
    first = jobs.hold("alice")
    alice = [jobs.job(f"a{n}", "alice") for n in range(2, 11)]
    bob = jobs.job("b1", "bob")
    # alice's second job had its turn coming before bob asked; then bob's turn, then alice's rest.
    assert lane.position(bob) == (2, 10)
    assert lane.position(alice[0]) == (1, 10) and lane.position(alice[1]) == (3, 10)
    started = jobs.release(first, bob, *alice)
    assert started.index("b1") < started.index("a3"), "bob starts before alice's last 8 jobs"
    assert [name for name in started if name.startswith("a")] == [f"a{n}" for n in range(2, 11)]


def test_owners_take_turns_and_each_keeps_its_own_order(lane):
    jobs = Recorder(lane)
    first = jobs.hold("x")
    submitted = [jobs.job(name, name[0]) for name in ("a1", "a2", "a3", "b1", "b2", "b3", "c1")]
    assert jobs.order() == ["a1", "b1", "c1", "a2", "b2", "a3", "b3"]
    assert [lane.position(job) for job in submitted] == [(1, 7), (4, 7), (6, 7), (2, 7), (5, 7),
                                                         (7, 7), (3, 7)]
    assert jobs.release(first, *submitted)[1:] == ["a1", "b1", "c1", "a2", "b2", "a3", "b3"]


def test_the_owner_of_the_running_job_waits_for_the_others_turn(lane):
    jobs = Recorder(lane)
    first = jobs.hold("alice")
    jobs.job("b1", "bob")
    jobs.job("a2", "alice")
    # The tie on tags goes to the earlier submission; bob asked first.
    assert jobs.order() == ["b1", "a2"]
    jobs.release(first)


def test_a_checkpoint_switch_runs_after_every_job_before_it_and_before_every_job_after_it(lane):
    jobs = Recorder(lane)
    first = jobs.hold("alice")
    before = [jobs.job(name, name[0]) for name in ("a1", "a2", "a3", "b1")]
    load = jobs.job("load", "carol", kind="load")
    after = [jobs.job(name, name[0]) for name in ("d1", "b2", "a4")]
    assert jobs.order() == ["a1", "b1", "a2", "a3", "load", "d1", "b2", "a4"]
    assert lane.position(load) == (5, 8)
    unload = jobs.job("unload", "d", kind="unload")
    late = jobs.job("b3", "bob")
    assert jobs.order()[-3:] == ["a4", "unload", "b3"]
    started = jobs.release(first, *before, load, *after, unload, late)
    assert started[1:] == ["a1", "b1", "a2", "a3", "load", "d1", "b2", "a4", "unload", "b3"]


def test_a_cancelled_job_leaves_at_once_and_costs_its_owner_no_turns(lane):
    jobs = Recorder(lane)
    first = jobs.hold("alice")
    dropped = [jobs.job(f"a{n}", "alice", if_stopped_early=lambda: "nothing made") for n in (2, 3, 4)]
    bob = [jobs.job(f"b{n}", "bob") for n in (1, 2, 3)]
    for job in dropped:
        job.interrupt()
        assert lane.cancel(job)
        assert job.done and job.state == DONE and job.outcome() == "nothing made"
    assert not lane.cancel(first), "a running job is stopped by its flag, not taken off the lane"
    assert lane.position(bob[0]) == (1, 3)
    again = jobs.job("a5", "alice")
    assert jobs.order() == ["b1", "a5", "b2", "b3"]
    started = jobs.release(first, again, *bob)
    assert "a2" not in started and started[1:] == ["b1", "a5", "b2", "b3"]


def test_a_full_queue_still_refuses_jobs():
    small = JobQueue(max_waiting=2)
    try:
        jobs = Recorder(small)
        first = jobs.hold("alice")
        jobs.job("a2", "alice")
        jobs.job("b1", "bob")
        with pytest.raises(QueueFullError, match="2 jobs are waiting"):
            jobs.job("c1", "carol")
        jobs.release(first)
    finally:
        small.shutdown()


def test_lookups_list_the_running_job_then_the_run_order(lane):
    jobs = Recorder(lane)
    first = jobs.hold("alice")
    a2, b1, a3 = jobs.job("a2", "alice"), jobs.job("b1", "bob"), jobs.job("a3", "alice")
    assert lane.jobs_of("alice") == [first, a2, a3]
    assert lane.find(b1.id) is b1 and lane.queued_count() == 3
    assert lane.jobs_of_kind("generate") == [first, a2, b1, a3]
    jobs.release(first, a2, b1, a3)
    assert lane.position(a3) is None and lane.find(a3.id) is None


def test_interrupt_and_skip_touch_only_the_callers_generations(engine):
    jobs = Recorder(engine.queue)
    held = jobs.hold("alice")
    small = GenerationRequest(prompt="a cat", steps=2, width=64, height=64, save_images=False, save_grid=False)
    bob = engine.submit(small, owner="bob")
    later = engine.submit(small, owner="alice")
    assert engine.job_to_watch("bob") is bob and engine.job_to_watch("carol") is held
    assert engine.skip("bob") == 0 and not held.skipped
    assert engine.interrupt("bob") == 1
    # bob's waiting job ends now, with the usual answer of an interrupted generation.
    assert bob.done and bob.outcome().interrupted and bob.outcome().images == []
    assert not held.interrupted and not later.interrupted and not later.done
    assert engine.interrupt("nobody") == 0
    assert engine.skip("alice") == 1 and held.skipped
    jobs.release(held)
    assert later.outcome().images and not later.outcome().interrupted

"""Workers in the studio's process (other GPUs of one machine): the studio's queue sends
generations to them, they make the pictures, the studio saves them. The same lanes serve Ray
workers (tests/test_cluster_ray.py); here the workers are WorkerServices called directly."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.request import GenerationRequest
from tests.support.cluster import DyingClient, add_worker, studio, worker_service

USERS = ("ann", "ben", "cat", "dan")


def small(seed: int, **fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": f"a red cube {seed}", "steps": 3, "width": 64, "height": 64,
                                "seed": seed, "save_grid": False, **fields})


def saved_files(root) -> list:
    return sorted(path for path in root.rglob("*.png"))


@pytest.fixture
def head(tiny_models, tmp_path):
    engine = studio(tiny_models, tmp_path / "studio")
    engine.load_checkpoint("tiny-sd1").outcome()
    yield engine
    engine.shutdown()


@pytest.fixture
def two_workers(head, tiny_models, tmp_path):
    services = [worker_service(tiny_models, tmp_path / name, name) for name in ("w1", "w2")]
    lanes = [add_worker(head, service) for service in services]
    yield services, lanes
    for service in services:
        service.engine.shutdown()


def test_jobs_of_four_users_run_once_each_on_the_workers_and_match_one_gpu(head, two_workers, engine, tmp_path):
    services, _ = two_workers
    jobs = [(head.submit(small(seed), owner=USERS[seed % 4]), seed) for seed in range(8)]
    results = [(job.outcome(), seed) for job, seed in jobs]
    assert {job.lane_name for job, _ in jobs} == {"w1", "w2"}  # both workers took jobs
    for (result, seed), (job, _) in zip(results, jobs):
        assert result.seeds == [seed] and len(result.images) == 1
        alone = engine.generate(small(seed, save_images=False))  # one engine, as with one GPU
        assert np.array_equal(np.asarray(result.images[0]), np.asarray(alone.images[0]))
        # Saved once, at the studio, under its own name and number.
        assert result.paths[0].is_file() and result.paths[0].is_relative_to(tmp_path / "studio" / "outputs")
    assert len(saved_files(tmp_path / "studio" / "outputs")) == 8
    assert not saved_files(tmp_path / "w1") and not saved_files(tmp_path / "w2")  # workers save nothing
    assert sum(service.jobs_done for service in services) == 8


def test_a_job_for_a_checkpoint_only_one_worker_has_goes_to_that_worker(head, tiny_models, tmp_path):
    both = worker_service(tiny_models, tmp_path / "both", "both", ("sd1", "sd2"))
    only_sd1 = worker_service(tiny_models, tmp_path / "sd1", "sd1-only")
    add_worker(head, only_sd1)
    add_worker(head, both)
    try:
        jobs = [head.submit(small(seed), overrides={"sd_model_checkpoint": "tiny-sd2"}) for seed in range(3)]
        for job in jobs:
            job.outcome()
            assert job.lane_name == "both"
        # The worker's own file of that checkpoint (matched by sha256, named differently there).
        assert both.engine.models.current.info.model_name == "worker-copy-sd2"
    finally:
        both.engine.shutdown()
        only_sd1.engine.shutdown()


def test_an_idle_worker_that_used_the_jobs_lora_lately_takes_it(head, tiny_models, tmp_path):
    from tests.support.lora_files import write_kohya_lora

    services = []
    for name in ("l1", "l2"):
        (tmp_path / name / "models" / "Lora").mkdir(parents=True)
        write_kohya_lora(tiny_models.reference_pipeline("sd1"), tmp_path / name / "models" / "Lora" / "glow.safetensors")
        services.append(worker_service(tiny_models, tmp_path / name, name))
    lanes = [add_worker(head, service) for service in services]
    try:
        first = head.submit(small(1, prompt="a cat <lora:glow:0.8>"))
        first.outcome()
        warm = next(lane for lane in lanes if lane.name == first.lane_name)
        assert warm.info.recent_loras == {"glow"}
        # Both idle, both with the checkpoint loaded: the one whose LoRA files are warm takes it,
        # job after job; a job without LoRAs may go to either.
        for seed in (2, 3, 4):
            again = head.submit(small(seed, prompt="a dog <lora:glow:0.5>"))
            again.outcome()
            assert again.lane_name == warm.name
    finally:
        for service in services:
            service.engine.shutdown()


def test_a_dying_worker_hands_its_job_to_the_other_without_duplicate_files(head, tiny_models, tmp_path):
    dying = worker_service(tiny_models, tmp_path / "dying", "dying")
    steady = worker_service(tiny_models, tmp_path / "steady", "steady")
    add_worker(head, dying, DyingClient(dying, after=1))
    job = head.submit(small(7, steps=6))
    while job.lane_name != "dying":
        threading.Event().wait(0.01)
    add_worker(head, steady)  # a worker that joins later picks up the waiting job
    try:
        result = job.outcome()
        assert job.lane_name == "steady" and job.retries == 1 and result.seeds == [7]
        assert [lane.name for lane in head.queue.lanes] == ["studio", "steady"]
        assert len(saved_files(tmp_path / "studio" / "outputs")) == 1
    finally:
        dying.engine.shutdown()
        steady.engine.shutdown()


def test_out_of_memory_on_one_worker_fails_that_job_and_the_other_worker_goes_on(head, tiny_models, tmp_path):
    from engine.errors import OutOfMemoryUserError
    from engine.memory.memory_guard import FaultPlan

    short = worker_service(tiny_models, tmp_path / "short", "short", faults=FaultPlan({"denoise": 1}))
    fine = worker_service(tiny_models, tmp_path / "fine", "fine")
    add_worker(head, short)
    try:
        with pytest.raises(OutOfMemoryUserError, match="denois"):
            head.generate(small(1))
        add_worker(head, fine)
        jobs = [head.submit(small(seed)) for seed in range(2, 6)]
        assert [job.outcome().seeds for job in jobs] == [[2], [3], [4], [5]]
        assert {lane.name for lane in head.queue.lanes} == {"studio", "short", "fine"}  # both still serve
        assert short.jobs_done >= 1
    finally:
        short.engine.shutdown()
        fine.engine.shutdown()


def test_without_workers_a_job_waits_saying_why_and_runs_when_one_joins(head, tiny_models, tmp_path):
    head.queue.no_lane_note = lambda job: "Waiting for a GPU worker: none has joined"
    job = head.submit(small(3))
    threading.Event().wait(0.3)
    assert not job.done and job.textinfo == "Waiting for a GPU worker: none has joined"
    assert head.queue.position(job) == (1, 1)
    late = worker_service(tiny_models, tmp_path / "late", "late")
    add_worker(head, late)
    try:
        assert job.outcome().seeds == [3]
    finally:
        late.engine.shutdown()


def test_progress_previews_interrupt_and_skip_work_through_a_worker(head, two_workers):
    from engine.jobs import RUNNING

    long = head.submit(small(11, steps=40, batch_size=1, n_iter=3), owner="ann")
    waiting = [head.submit(small(20 + n, steps=40), owner="ben") for n in range(2)]
    queued = head.submit(small(30), owner="cat")
    while long.step < 6 or long.preview is None:  # a live preview every 5 steps (the default)
        threading.Event().wait(0.02)
    assert long.preview.mode == "RGB" and long.preview_id >= 1
    snapshot = long.snapshot()
    assert snapshot.state == RUNNING and snapshot.total_steps >= 40 and snapshot.step >= 2
    assert head.job_to_watch("ann") is long and head.queue.position(queued) is not None
    assert head.skip("ann") == 1  # the running image of ann's first batch stops; the next ones run
    assert head.interrupt("ben") == 2
    for job in waiting:
        assert job.outcome().interrupted
    assert head.interrupt("ann") == 1
    result = long.outcome()
    assert result.interrupted and len(result.images) < 3
    assert queued.outcome().images

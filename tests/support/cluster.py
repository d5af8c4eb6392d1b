"""Studios with workers in tests: engines on the tiny models that save nothing themselves
(RecordingWriter), wrapped as WorkerServices and added to a studio engine's queue as lanes."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.addons import AddOns
from engine.cluster.lanes import StudioLane, WorkerLane
from engine.cluster.recording import RecordingWriter
from engine.cluster.service import WorkerService
from engine.devices import DeviceConfig
from engine.engine import Engine
from engine.files import HashCache
from engine.jobs import JobQueue, WorkerLost
from engine.memory.memory_guard import FaultPlan
from engine.models.pipelines import ModelManager
from engine.models.registry import ModelRegistry
from engine.output.writer import OutputWriter
from engine.settings.store import Settings


class InProcessClient:
    """A WorkerClient calling the service directly (the studio runs its workers in processes:
    engine/cluster/process_workers.py; these tests are about the lanes and the service)."""

    def __init__(self, service):
        self.service = service

    def call(self, method: str, *args):
        return getattr(self.service, method)(*args)

    def close(self) -> None:
        self.service.engine.shutdown()


def worker_service(tiny_models, data_dir: Path, name: str, checkpoints: tuple[str, ...] = ("sd1",),
                   faults: FaultPlan | None = None) -> WorkerService:
    """A worker whose own models folder holds copies of the named tiny checkpoints; `faults`:
    stages that run out of memory on it."""
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    for family in checkpoints:
        shutil.copy(tiny_models.checkpoint(family), folder / f"worker-copy-{family}.safetensors")
    hashes = HashCache(data_dir / "cache.json")
    models = ModelManager(ModelRegistry([folder], hashes), DeviceConfig.choose(use_cpu=True),
                          config_root=tiny_models.config_root)
    queue = JobQueue(name=f"worker-{name}")
    settings = Settings(data_dir / "config.json")
    writer = RecordingWriter(data_dir / "outputs", settings, lambda: queue.current.id if queue.current else None)
    addons = AddOns.in_data_dir(data_dir, hashes, faults=faults)
    engine = Engine(models, writer, settings, addons, queue=queue)
    # Loaded now, one worker at a time: engines in one process must not build models at once
    # (accelerate's empty-weight init is process-wide), which is why the app uses processes.
    engine.load_checkpoint(f"worker-copy-{checkpoints[0]}", remember=False).outcome()
    return WorkerService(engine, name, "cpu")


def studio(tiny_models, data_dir: Path, generates: bool = False) -> Engine:
    """A studio engine whose own lane makes no pictures (as a head without a GPU)."""
    hashes = HashCache(data_dir / "cache.json")
    models = ModelManager(ModelRegistry([tiny_models.models_dir], hashes), DeviceConfig.choose(use_cpu=True),
                          config_root=tiny_models.config_root)
    engine = Engine(models, OutputWriter(data_dir / "outputs"), Settings(data_dir / "config.json"),
                    AddOns.in_data_dir(data_dir, hashes), queue=JobQueue(lanes=[]))
    engine.has_workers, engine.studio_generates = True, generates

    def loaded():
        current = engine.models.current
        return (current.info.title, current.info.sha256) if current is not None else None

    engine.queue.add_lane(StudioLane(generates, loaded))
    return engine


def add_worker(engine: Engine, service: WorkerService, client=None) -> WorkerLane:
    lane = WorkerLane(client or InProcessClient(service))
    engine.queue.add_lane(lane)
    return lane


class DyingClient(InProcessClient):
    """A worker that stops answering (as a killed process) once its job has made `after` steps."""

    def __init__(self, service: WorkerService, after: int):
        super().__init__(service)
        self.after = after
        self.died = False

    def call(self, method: str, *args):
        if self.died:
            raise WorkerLost(f"worker {self.service.name} stopped")
        answer = super().call(method, *args)
        if method == "poll" and answer["step"] >= self.after:
            self.died = True
            self.service.interrupt(args[0])  # what is left of its work never comes back
            raise WorkerLost(f"worker {self.service.name} stopped")
        return answer

"""The cluster on Ray: the studio's side (StudioCluster) and a worker machine's (serve_workers).

The only module that imports Ray; app.py loads it for --cluster and --worker alone, so a studio
on one machine starts no Ray and pays nothing for it.

- `--cluster` starts a Ray head on this machine (`ray start --head --block`, bound to
  --cluster-bind, default 127.0.0.1) or joins the one at --cluster-address, then watches for
  worker actors: each that appears becomes a lane of the studio's queue.
- `--worker --cluster-address HOST:PORT` joins that cluster and starts one actor per GPU (or one
  on the CPU) on this machine, each a WorkerService around an engine built from this machine's
  own flags and models folder, named "sd-studio-worker:<name>" in the "sd-studio" namespace.

Ray has no authentication of its own: see docs/cluster.md for running it on a private network.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engine.cluster.lanes import WorkerLane
from engine.cluster.service import WorkerService
from engine.jobs import JobQueue, WorkerLost

log = logging.getLogger(__name__)

NAMESPACE = "sd-studio"
ACTOR_PREFIX = "sd-studio-worker:"
WATCH_SECONDS = 2.0  # how often the studio looks for workers that joined or left
CALL_SECONDS = {"describe": 900.0, "start": 900.0}  # the first call may hash a worker's checkpoints
DEFAULT_CALL_SECONDS = 120.0
HEAD_START_SECONDS = 60.0


class RayClient:
    """A worker actor, called as a WorkerClient: its death (or a call it never answers) is
    WorkerLost; an error its method raised comes back as itself."""

    def __init__(self, actor, name: str):
        self.actor = actor
        self.name = name

    def call(self, method: str, *args) -> Any:
        try:
            return ray.get(getattr(self.actor, method).remote(*args),
                           timeout=CALL_SECONDS.get(method, DEFAULT_CALL_SECONDS))
        except ray.exceptions.RayTaskError as error:
            raise error.cause from None
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
            reason = "did not answer in time" if isinstance(error, ray.exceptions.GetTimeoutError) else "stopped"
            raise WorkerLost(f"worker {self.name} {reason}") from error

    def close(self) -> None:
        """The worker machine owns its actor; the studio only lets go of it."""


class WorkerActor(WorkerService):
    """A WorkerService whose engine is built where it runs, by `build(device_id)` (app.py's)."""

    def __init__(self, build: Callable[[str | None], Any], device_id: str | None, name: str):
        engine = build(device_id)
        super().__init__(engine, name, engine.models.device.label)


def _ray_command() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


class StudioCluster:
    """The studio's view of the cluster: finds worker actors and adds them as lanes."""

    def __init__(self, queue: JobQueue, address: str, head: subprocess.Popen | None):
        self.queue = queue
        self.address = address
        self._head = head
        self._lanes: dict[str, WorkerLane] = {}
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="cluster-watch", daemon=True)

    @classmethod
    def start(cls, flags, queue: JobQueue) -> "StudioCluster":
        head = None
        address = flags.cluster_address
        if address is None:
            bind = flags.cluster_bind or "127.0.0.1"
            address = f"{bind}:{flags.cluster_port}"
            # --block keeps the head's processes tied to this child: they stop when it does.
            # In a process group of its own, so stopping the studio stops every process of the head.
            head = subprocess.Popen([_ray_command(), "start", "--head", "--block", f"--port={flags.cluster_port}",
                                     f"--node-ip-address={bind}", "--include-dashboard=false",
                                     "--disable-usage-stats", "--num-gpus=0"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        _connect(address, head)
        queue.no_lane_note = lambda job: (
            "Waiting for a GPU worker: none that has this job's checkpoint has joined the cluster "
            f"(add one with ./webui.sh --worker --cluster-address {address})")
        cluster = cls(queue, address, head)
        cluster._watcher.start()
        log.info("cluster: %s; workers join with ./webui.sh --worker --cluster-address %s", address, address)
        return cluster

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.look()
            except Exception:  # the cluster may be restarting; look again next time
                log.warning("cluster: could not list the workers", exc_info=True)
            self._stop.wait(WATCH_SECONDS)

    def look(self) -> None:
        """Add the workers that joined; drop the idle ones that left."""
        names = {entry["name"] if isinstance(entry, dict) else entry
                 for entry in ray.util.list_named_actors(all_namespaces=False)}
        names = {name for name in names if name.startswith(ACTOR_PREFIX)}
        in_queue = set(map(id, self.queue.lanes))
        for name, lane in list(self._lanes.items()):
            if id(lane) not in in_queue:  # it stopped under a job: the queue dropped it
                del self._lanes[name]
        for name in sorted(names - set(self._lanes)):
            client = RayClient(ray.get_actor(name), name[len(ACTOR_PREFIX):])
            try:
                lane = WorkerLane(client)
            except WorkerLost:
                continue  # listed but already gone
            self._lanes[name] = lane
            self.queue.add_lane(lane)
            log.info("cluster: worker %s joined (%s on %s)", lane.name, lane.info.device, lane.info.node)
        running = {job.lane_name for job in self.queue.running()}
        for name, lane in list(self._lanes.items()):
            if lane.name in running:
                continue
            try:
                lane.refresh()
            except WorkerLost:
                log.warning("cluster: worker %s left", lane.name)
                del self._lanes[name]
                self.queue.remove_lane(lane)

    def stop(self) -> None:
        self._stop.set()
        ray.shutdown()
        if self._head is not None:
            _stop_group(self._head)


def _stop_group(process: subprocess.Popen) -> None:
    """Stop a process started with start_new_session and everything it started."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)  # anyone of the group left?
            except ProcessLookupError:
                process.poll()
                return
            time.sleep(0.2)


def _connect(address: str, starting: subprocess.Popen | None = None) -> None:
    """ray.init on the cluster at `address`; waits for a head or node this process just started."""
    deadline = time.monotonic() + (HEAD_START_SECONDS if starting is not None else 5)
    while True:
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
            return
        except Exception as error:  # Ray raises ConnectionError, RuntimeError or ValueError here
            ray.shutdown()
            if starting is not None and starting.poll() is not None:
                raise RuntimeError(f"Ray did not start for {address} (is the port free?)") from error
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot reach the Ray cluster at {address}: {error}") from error
            time.sleep(1)


def _join_as_node(address: str, flags, device_ids: list[str | None]) -> subprocess.Popen:
    """Make this machine a node of the cluster (its raylet), offering the chosen GPUs."""
    env = dict(os.environ)
    gpus = [device for device in device_ids if device is not None]
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)  # Ray offers exactly these
    command = [_ray_command(), "start", "--block", f"--address={address}", "--disable-usage-stats"]
    if flags.cluster_bind:
        command.append(f"--node-ip-address={flags.cluster_bind}")
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def serve_workers(flags, device_ids: list[str | None], build: Callable[[str | None], Any], name: str) -> int:
    """`--worker`: this machine's GPUs as actors of the studio's cluster, until they stop (or
    this process is stopped). Returns the exit status."""
    node_process = None
    try:
        _connect(flags.cluster_address)  # this machine is a node already (e.g. the studio's)
    except RuntimeError:
        node_process = _join_as_node(flags.cluster_address, flags, device_ids)
        _connect(flags.cluster_address, node_process)
    node = ray.get_runtime_context().get_node_id()
    remote = ray.remote(WorkerActor)
    actors = []
    for device_id in device_ids:
        label = f"{name}:gpu{device_id}" if device_id is not None else name
        # On a GPU Ray gives the actor that GPU alone (as its cuda:0); pinned to this machine.
        gpu = device_id is not None
        options = {"name": ACTOR_PREFIX + label, "max_concurrency": 8, "max_restarts": 0,
                   "num_gpus": 1 if gpu else 0, "num_cpus": 0 if gpu else 1,
                   "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
        actor = remote.options(**options).remote(build, "0" if gpu else None, label)
        ray.get(actor.describe.remote())  # built and listed before the studio sends it work
        actors.append((label, actor))
        log.info("worker %s is ready", label)
    while actors:
        time.sleep(WATCH_SECONDS)
        for label, actor in list(actors):
            try:
                ray.get(actor.describe.remote(), timeout=CALL_SECONDS["describe"])
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                log.error("worker %s stopped; start ./webui.sh --worker again to bring it back", label)
                actors.remove((label, actor))
    ray.shutdown()
    if node_process is not None:
        _stop_group(node_process)
    return 1

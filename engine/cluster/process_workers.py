"""Workers for the other GPUs of this machine, each in a process of its own.

Threads in one process would share what libraries patch process-wide while a model is built
(accelerate's empty-weight initialisation swaps torch's parameter registration for a moment), so
one GPU's checkpoint load could corrupt another GPU's LoRA; they would also share one GIL. So each
GPU's WorkerService runs in a child process (multiprocessing's "spawn": no CUDA state is
inherited) and the studio talks to it over a pipe: one request, one answer, in turn. No Ray, no
network port: the pipe is a socket pair between the two processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import Any, Callable

from engine.jobs import WorkerLost

log = logging.getLogger(__name__)

START_SECONDS = 600.0  # building the engine (imports, extensions) and the first describe
CALL_SECONDS = {"describe": 900.0, "start": 900.0}
DEFAULT_CALL_SECONDS = 120.0


def _serve(connection, build: Callable[[str | None], Any], device_id: str | None, name: str) -> None:
    """In the child: build the worker, then answer calls until the studio closes the pipe."""
    from engine.cluster.service import WorkerService

    engine = build(device_id)
    service = WorkerService(engine, name, engine.models.device.label)
    connection.send(("ready", service.describe()))
    while True:
        try:
            method, args = connection.recv()
        except (EOFError, OSError):  # the studio is gone
            break
        if method == "close":
            break
        try:
            connection.send(("ok", getattr(service, method)(*args)))
        except Exception as error:  # the caller raises it again
            from engine.cluster.payload import portable_error

            connection.send(("error", portable_error(error)))
    engine.shutdown()


class ProcessClient:
    """A WorkerClient for a worker process: calls in turn over its pipe; a dead process (or one
    that does not answer in time) is WorkerLost."""

    def __init__(self, build: Callable[[str | None], Any], device_id: str | None, name: str):
        self.name = name
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end, build, device_id, name),
                                       name=f"worker-{name}", daemon=True)
        self.process.start()
        child_end.close()
        self._lock = threading.Lock()
        kind, self.first_info = self._receive(START_SECONDS)
        if kind != "ready":
            raise RuntimeError(f"worker {name} did not start")

    def call(self, method: str, *args) -> Any:
        with self._lock:
            try:
                self._connection.send((method, args))
            except (OSError, ValueError) as error:
                raise WorkerLost(f"worker {self.name} stopped") from error
            kind, value = self._receive(CALL_SECONDS.get(method, DEFAULT_CALL_SECONDS))
        if kind == "error":
            raise value
        return value

    def _receive(self, seconds: float):
        try:
            if not self._connection.poll(seconds):
                raise WorkerLost(f"worker {self.name} did not answer in time")
            return self._connection.recv()
        except (EOFError, OSError) as error:
            raise WorkerLost(f"worker {self.name} stopped") from error

    def close(self) -> None:
        try:
            with self._lock:
                self._connection.send(("close", ()))
        except (OSError, ValueError):
            pass
        self.process.join(timeout=20)
        if self.process.is_alive():
            self.process.terminate()

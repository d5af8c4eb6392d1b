"""A studio generation made ready to run on a worker (the Engine calls this when it has workers).

The job's checkpoint is fixed when it is submitted (the request's override, else the checkpoint
chosen last, even if its switch still waits in the queue), so a worker that picks the job later
loads the right one. The studio's settings are read at the same moment.
"""

from __future__ import annotations

from typing import Any, Callable

from engine.cluster.payload import CheckpointRef, JobPayload, RemoteWork, loras_of, shipped_settings
from engine.cluster.recording import replay, swap_paths


def checkpoint_ref(registry, title: str | None) -> CheckpointRef | None:
    if not title:
        return None
    info = registry.with_hash(registry.find(title))
    return CheckpointRef(info.title, info.sha256)


def remote_work(engine, request, owner: str, checkpoint: str | None, overrides: dict, modules: tuple | None,
                make_grid: bool, finish: Callable[[Any], Any]) -> RemoteWork | None:
    """None when there is no checkpoint to run it with (the job then waits for the studio's lane,
    which says so)."""
    ref = checkpoint_ref(engine.models.registry, checkpoint or engine.chosen_checkpoint())
    if ref is None:
        return None
    settings = engine.settings
    defaults = {key: option.default for key, option in settings.options.items()}
    shipped = shipped_settings(settings.as_dict(), defaults)
    job_settings = {key: value for key, value in overrides.items() if key != "sd_model_checkpoint"}

    def payload(job_id: str) -> JobPayload:
        return JobPayload(job_id, owner, request, ref, shipped, job_settings, modules, make_grid)

    def saved_here(result, notes: list) -> Any:
        return finish(swap_paths(result, replay(notes, engine.writer)))

    return RemoteWork(payload, ref, saved_here, loras_of(request))

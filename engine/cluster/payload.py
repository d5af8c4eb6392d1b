"""What travels between the studio and a worker: the job (JobPayload) and what comes back.

Everything here is plain data that pickles, so the same objects go to a worker in this process
and to a Ray actor on another machine.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.errors import UserError
from engine.output.saving_options import FOLDER_DEFAULTS

# Settings a worker never takes from the studio: the studio's folders (the worker saves nothing),
# the checkpoint (chosen by hash: see CheckpointRef), and settings that shape the whole app.
NOT_SHIPPED = frozenset(FOLDER_DEFAULTS) | {"sd_model_checkpoint", "forge_additional_modules",
                                            "disabled_extensions", "hidden_tabs", "sd_checkpoint_cache"}


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint as the studio lists it; workers match it by sha256 (by title when the studio
    runs with --no-hashing), since their files may sit under other names."""

    title: str
    sha256: str | None

    def matches(self, checkpoints: dict[str, str], titles: frozenset[str] | set[str]) -> str | None:
        """This worker's title for it: `checkpoints` maps the worker's sha256s to its titles."""
        if self.sha256:
            return checkpoints.get(self.sha256)
        return self.title if self.title in titles else None


@dataclass(frozen=True)
class JobPayload:
    """A generation as a worker runs it: the request already validated and completed by the
    studio's settings, which go along (those that differ from the defaults) so the worker
    makes the same pictures the studio would."""

    job_id: str
    owner: str
    request: Any  # engine.request.GenerationRequest
    checkpoint: CheckpointRef
    settings: dict[str, Any]
    overrides: dict[str, Any]  # the job's own override_settings (known keys only)
    modules: tuple | None = None  # VAE / text encoder files picked beside a FLUX.1 / SD 3.x checkpoint
    make_grid: bool = True


@dataclass
class RemoteWork:
    """A job's way to run on a worker, kept on the studio's Job: what to ship, which checkpoint
    it needs, and what the studio does with the result (saving it, keeping its settings)."""

    payload: Callable[[str], JobPayload]  # given the job's id
    checkpoint: CheckpointRef
    finish: Callable[[Any, list], Any]  # (the worker's result, its save notes) -> the job's result
    loras: frozenset = frozenset()  # the LoRAs its prompts name


@dataclass
class WorkerInfo:
    """What the studio shows and schedules by: one worker (one GPU)."""

    name: str
    node: str  # host name
    device: str  # e.g. "NVIDIA H100 (cuda:0)", "cpu"
    pid: int
    loaded: str | None = None  # the worker's title of its loaded checkpoint
    loaded_sha256: str | None = None
    state: str = "idle"  # idle, busy, loading, lost
    checkpoints: dict[str, str] = field(default_factory=dict)  # sha256 -> the worker's title
    titles: frozenset = frozenset()
    jobs_done: int = 0
    recent_loras: frozenset = frozenset()  # LoRAs of its last jobs (their files are warm there)

    def listing(self) -> dict[str, Any]:
        """For the API and the UI's table."""
        return {"name": self.name, "node": self.node, "device": self.device, "state": self.state,
                "loaded": self.loaded, "checkpoints": len(self.titles), "jobs_done": self.jobs_done}


def loras_of(request) -> frozenset:
    """The LoRA names a request's prompts use (`<lora:name:...>`, `<lyco:...>`)."""
    from engine.prompts.prompt_parser import extract_extra_networks

    names = set()
    for text in (request.prompt, request.negative_prompt):
        names.update(call.name for call in extract_extra_networks(text or "")[1] if call.kind in ("lora", "lyco"))
    return frozenset(names)


def affinity(checkpoint_loaded: bool, loras_warm: bool) -> int:
    """How well a lane suits a job (the queue gives an idle job to the idle lane that suits it
    best): its checkpoint loaded counts most, then its LoRAs used lately."""
    return 1 + 2 * checkpoint_loaded + loras_warm


def shipped_settings(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The studio's settings a worker runs a job with: those changed from their defaults."""
    return {key: value for key, value in values.items()
            if key not in NOT_SHIPPED and key in defaults and value != defaults[key]}


def portable_error(error: BaseException) -> BaseException:
    """The error as it can travel back: itself if it pickles, else a UserError with its words."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # an exception class that cannot be rebuilt elsewhere
        message = getattr(error, "message", None) or str(error)
        return UserError(f"{type(error).__name__}: {message}")

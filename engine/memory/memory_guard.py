"""Running out of memory in a job: one clear message whatever the stage, the memory given back,
and the next job unaffected. Also a hook for tests that makes a named stage run out on purpose.

Each stage of a job that can need a lot of memory (prompt encoding, denoising, VAE decode and
encode, the hires fix pass, upscaling, face restoration) runs inside `stage(name)`. An
out-of-memory error raised there (torch.OutOfMemoryError on a GPU, MemoryError on the CPU) becomes
an OutOfMemoryUserError that names the stage and what to change; a stage around another (the
hires fix pass around its denoising) adds itself to the message. The job's patches (LoRAs,
extensions, memory modes, ControlNet) are context managers, so they are undone as the error
passes them; the job runner then calls `as_user_error`, which lets go of the failed job's frames
and hands the allocator's cache back.

For tests, a `FaultPlan` makes named stages run out on purpose. It is an object, not a setting of
this module: app.py makes one at start (from SD_STUDIO_FAULTS), the add-ons carry it to the job
runners and libraries, and each `stage()` is handed the plan of the job it runs in.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from engine.devices import free_memory
from engine.errors import OutOfMemoryUserError

log = logging.getLogger(__name__)

MEMORY_ERRORS = (torch.OutOfMemoryError, MemoryError)
# Some report it as a plain RuntimeError: torch's CPU allocator ("DefaultCPUAllocator: can't
# allocate memory"), a CUDA kernel launch ("CUDA error: out of memory"), MPS.
_OOM_TEXT = re.compile(r"\bout of memory\b|DefaultCPUAllocator: (can't allocate|not enough) memory",
                       re.IGNORECASE)
FAULTS_ENV = "SD_STUDIO_FAULTS"  # for tests only, read by app.py at start: "denoise:1,vae_decode:2"

SMALLER = "make the picture smaller (width, height) or lower the batch size"
SETTINGS_HINT = ("The memory-saving settings `sd_vae_tiling`, `attention_slicing` and `memory_mode` "
                 "(medvram or lowvram; Settings > Memory and speed) help too.")


@dataclass(frozen=True)
class Stage:
    doing: str                # "while <doing>", where it ran out
    within: str               # "(in <within>)", when a stage inside it ran out
    advice: tuple[str, ...]   # what to change, most useful first


STAGES = {
    "model_placement": Stage("moving the model to the GPU", "moving the model",
                             ("set `memory_mode` to medvram or lowvram",)),
    "text_encoding": Stage("encoding the prompt", "prompt encoding",
                           ("lower the batch size or shorten the prompt",)),
    "denoise": Stage("denoising", "denoising", (SMALLER,)),
    "vae_decode": Stage("decoding the image (VAE)", "the VAE decode", (SMALLER,)),
    "vae_decode_tiled": Stage("decoding the image (VAE), even in tiles", "the VAE decode", (SMALLER,)),
    "vae_encode": Stage("encoding the init image (VAE)", "the VAE encode", (SMALLER,)),
    "hires_fix": Stage("running the hires fix pass", "the hires fix pass",
                       ("use fewer hires steps or a lower hires upscale factor (or resize-to size)",)),
    "upscale": Stage("upscaling", "upscaling",
                     ("upscale by a smaller factor or start from a smaller picture",)),
    "face_restore": Stage("restoring faces", "face restoration",
                          ("turn face restoration off or use a smaller picture",)),
}
# The stage names a fault can be injected at: a retry stage shares its first attempt's name.
FAULT_STAGES = frozenset(STAGES) - {"vae_decode_tiled"}


def describe(memory: str, stages: tuple[str, ...], needed: str = "") -> str:
    """The user's message: where memory ran out, then what to change."""
    where = ""
    if stages:
        inner, *outer = [STAGES[name] for name in stages]
        where = f" while {inner.doing}" + "".join(f" (in {stage.within})" for stage in outer)
    asked = f" (it tried to allocate {needed})" if needed else ""
    advice = list(dict.fromkeys(tip for stage in [STAGES[n] for n in stages] for tip in stage.advice))
    advice = advice or [SMALLER]
    return (f"Out of {memory} memory{where}{asked}. To make it fit: {'; '.join(advice)}. "
            f"{SETTINGS_HINT}")


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MEMORY_ERRORS) or (
        isinstance(error, RuntimeError) and bool(_OOM_TEXT.search(str(error))))


def _failure(error: BaseException, stages: tuple[str, ...]) -> OutOfMemoryUserError:
    """A raw out-of-memory error as the user's error."""
    if isinstance(error, OutOfMemoryUserError):
        memory, needed = error.memory, error.needed
    else:
        text = str(error)
        memory = "system" if isinstance(error, MemoryError) or "CPUAllocator" in text else "GPU"
        needed = _needed(text)
        log.warning("out of %s memory: %s", memory, (text.splitlines() or [type(error).__name__])[0][:300])
    forget_frames(error)
    return OutOfMemoryUserError(describe(memory, stages, needed), stages, memory, needed)


def _needed(text: str) -> str:
    """How much the failed allocation asked for, as torch's message says ("" when it does not)."""
    found = re.search(r"Tried to allocate ([\d.]+ ?[KMGT]?i?B)", text)
    if found:
        return found.group(1)
    found = re.search(r"tried to allocate (\d+) bytes", text)
    return f"{int(found.group(1)) / 2**30:.2f} GiB" if found else ""


@contextlib.contextmanager
def stage(name: str, fault: str | None = None, faults: FaultPlan | None = None) -> Iterator[None]:
    """Run a block as the named stage: running out of memory in it raises OutOfMemoryUserError
    saying so. `faults`: the test plan of the job this runs in (None: nothing injected); `fault`:
    the plan's name for this stage (the stage's own name by default)."""
    failure = None
    try:
        if faults is not None:
            faults.fire(fault or name)
        yield
    except OutOfMemoryUserError as error:
        if name in error.stages:
            raise
        failure = _failure(error, error.stages + (name,))
    except (*MEMORY_ERRORS, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        failure = _failure(error, (name,))
    # Raised outside the handler: the first error, its frames cleared, is no more than context.
    if failure is not None:
        raise failure from None


def as_user_error(error: BaseException) -> BaseException:
    """What a failed job reports. Out of memory: the message for the user, with the memory the job
    held given back (its frames dropped, the GPU allocator's cache emptied). Anything else: as is."""
    if is_out_of_memory(error):
        error = _failure(error, ())
    if isinstance(error, OutOfMemoryUserError):
        forget_frames(error)
        free_memory()
    return error


def forget_frames(error: BaseException) -> None:
    """Drop the local variables of the frames a failed attempt left behind (its tensors), for the
    error and the errors it arose from; only frames still running keep theirs."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if error.__traceback__ is not None:
            traceback.clear_frames(error.__traceback__)
            error.__traceback__ = None
        error = error.__cause__ or error.__context__


class FaultPlan:
    """Stages that run out of memory on purpose, for tests: how many more entries into each fail
    with torch.OutOfMemoryError. Made once by the composition root (app.py, from SD_STUDIO_FAULTS)
    or by a test, and handed to whatever runs the stages; an empty plan is inert."""

    def __init__(self, faults: dict[str, int] | None = None):
        self._left: dict[str, int] = {}
        self._lock = threading.Lock()
        for name, times in (faults or {}).items():
            self.inject(name, times)

    @classmethod
    def parse(cls, text: str | None) -> "FaultPlan":
        """A plan from "stage:times,..." (times defaults to 1); "" or None: an empty plan."""
        plan = cls()
        for item in filter(None, (part.strip() for part in (text or "").split(","))):
            name, _, times = item.partition(":")
            plan.inject(name.strip(), int(times) if times.strip() else 1)
        return plan

    def inject(self, name: str, times: int = 1) -> None:
        """Make the next `times` entries into stage `name` raise torch.OutOfMemoryError."""
        if name not in FAULT_STAGES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(sorted(FAULT_STAGES))}")
        with self._lock:
            self._left[name] = self._left.get(name, 0) + int(times)

    def clear(self) -> None:
        with self._lock:
            self._left.clear()

    def pending(self) -> dict[str, int]:
        """The faults not fired yet, by stage."""
        with self._lock:
            return dict(self._left)

    def __bool__(self) -> bool:
        return bool(self._left)

    def fire(self, name: str) -> None:
        """Raise torch.OutOfMemoryError if a fault is left for stage `name` (using it up)."""
        if not self._left:  # the usual case: nothing injected, no lock taken
            return
        with self._lock:
            left = self._left.get(name, 0)
            if not left:
                return
            if left == 1:
                del self._left[name]
            else:
                self._left[name] = left - 1
        raise torch.OutOfMemoryError(f"CUDA out of memory (injected at stage {name!r}, for tests)")

"""torch.compile of a model's forward, once per input shape, with a visible warm-up.

A compiled UNet is much faster per step on a GPU, but compiling it takes a minute or more, and
again for every new input size (compiling with dynamic shapes would be slower at every size).
So the first call at each size says so in the job's progress text and in the log; later calls
at that size go straight to the compiled code. torch keeps the compiled code per shape in the
process and Inductor keeps its artefacts on disk (TORCHINDUCTOR_CACHE_DIR), so a restart pays
less than the first run did.

The compiled function is installed as the module's own `forward` for the duration of a job, so
hooks registered on the module (timers, offloading) stay outside the compiled graph and a job that
patches the model (LoRA, ControlNet, tiling) can simply run without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from engine.option import Option

log = logging.getLogger(__name__)

COMPILE_MODES = ("reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune", "default")
# Modes whose compiled code replays CUDA graphs: their outputs live in buffers the next replay
# overwrites, so they are copied out (a latent-sized copy, negligible beside a UNet call).
CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})
# Sizes one process may compile before torch falls back to running uncompiled (its default, 8,
# is soon used up by a few image sizes times batch sizes).
RECOMPILE_LIMIT = 64

Compiler = Callable[..., Callable]


def shape_key(args: tuple, kwargs: dict) -> tuple:
    """What makes torch compile again: the shapes and dtypes of the tensor inputs (and which
    optional inputs are given at all)."""
    def describe(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return tuple(value.shape), str(value.dtype)
        if isinstance(value, dict):
            return tuple(sorted((k, describe(v)) for k, v in value.items()))
        if isinstance(value, (list, tuple)):
            return tuple(describe(v) for v in value)
        return value is not None
    return describe(args), describe(kwargs)


def use_cache_dir(folder: Path | None) -> None:
    """Keep Inductor's compiled artefacts in the app's data folder (not /tmp, which a reboot
    clears), unless the user chose a place already. Must run before the first compile."""
    if folder is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))


def raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
            return


class CompiledForward:
    """`module.forward` compiled; the first call per shape is announced as a warm-up."""

    def __init__(self, module: torch.nn.Module, label: str, mode: str, compiler: Compiler,
                 skip: Callable[[], bool] | None = None):
        self.label = label
        self.mode = mode
        # The class's forward, with the module passed in: holding the module (or a bound method
        # of it) here would keep an unloaded checkpoint in memory for as long as this lives.
        self.module = weakref.ref(module)
        self.forward = type(module).forward
        self.compiled = compiler(self.forward, mode=mode, dynamic=False)
        self.skip = skip  # when it says so, run uncompiled (e.g. a tiled VAE decode's odd shapes)
        self.seen: set[tuple] = set()
        self.job = None  # the job whose progress text announces a warm-up
        self.warmups: list[tuple[tuple, float]] = []  # (shape key, seconds), for the benchmark

    def __call__(self, *args, **kwargs):
        module = self.module()
        if self.skip is not None and self.skip():
            return self.forward(module, *args, **kwargs)
        key = shape_key(args, kwargs)
        if key in self.seen:
            return self._run(module, args, kwargs)
        return self._first_call(module, key, args, kwargs)

    def _first_call(self, module, key: tuple, args: tuple, kwargs: dict):
        job, size = self.job, _size_text(args)
        message = (f"Compiling the {self.label} for {size} (the first job at a new size does this "
                   "once; it can take a few minutes)")
        log.info("%s, mode %s", message, self.mode)
        before = job.textinfo if job is not None else ""
        if job is not None:
            job.textinfo = message
        started = time.perf_counter()
        try:
            output = self._run(module, args, kwargs)
        finally:
            if job is not None and job.textinfo == message:
                job.textinfo = before
        seconds = time.perf_counter() - started
        self.seen.add(key)
        self.warmups.append((key, seconds))
        log.info("compiled the %s for %s in %.1f s", self.label, size, seconds)
        return output

    def _run(self, module, args: tuple, kwargs: dict):
        if self.mode not in CUDA_GRAPH_MODES:
            return self.compiled(module, *args, **kwargs)
        # Each call is a new iteration for torch's CUDA graph trees: without the mark they can
        # take this call's inputs for the previous call's still-pending outputs.
        torch.compiler.cudagraph_mark_step_begin()
        return _copied(self.compiled(module, *args, **kwargs))


def _copied(output):
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, tuple):
        return tuple(_copied(item) for item in output)
    if hasattr(output, "to_tuple"):  # a diffusers output dataclass
        return type(output)(*_copied(output.to_tuple()))
    return output


def _size_text(args: tuple) -> str:
    sample = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if sample is None or sample.dim() != 4:
        return "this input"
    return f"{sample.shape[-1]}x{sample.shape[-2]} latents (batch {sample.shape[0]})"


@contextlib.contextmanager
def installed(module: torch.nn.Module, compiled: CompiledForward, job) -> Iterator[None]:
    """`module` runs `compiled` inside the block; whatever forward it had comes back after."""
    previous = module.__dict__.get("forward")
    compiled.job = job
    module.forward = compiled
    try:
        yield
    finally:
        compiled.job = None
        if previous is None:
            del module.forward
        else:
            module.forward = previous


# The settings of the fast path's compile piece (engine/runs/fast_path.py reads them).
FAST_PATH_OPTIONS = (
    Option("torch_compile", False,
           "Compile the UNet and VAE decoder with torch.compile (CUDA only): faster steps; the first "
           "job at each new image size waits while it compiles", "Memory and speed"),
    Option("torch_compile_mode", "reduce-overhead",
           "torch.compile mode (reduce-overhead and max-autotune replay CUDA graphs; max-autotune "
           "compiles much longer)", "Memory and speed", choices=COMPILE_MODES),
)

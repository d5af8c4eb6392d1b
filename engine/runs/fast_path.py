"""The fast path on CUDA: the same pictures (within fp16 noise), sooner.

Pieces, each switched on per job where it helps and measured by `python -m bench --ablate`:
- channels_last: UNet and VAE convolutions in NHWC, the layout tensor cores read directly.
- fused_qkv: self-attention's q, k and v projections as one matrix product (k and v for cross
  attention). The separate projections become views into the fused weight, so no memory is
  added; a job with LoRAs (merged into the separate projections' weights) runs with unfused processors.
- half_vae: decode in fp16 even where the VAE's config asks for fp32; a decode with NaN is redone
  in fp32, which then stays (engine/networks/vae.py).
- compile: the opt-in `torch_compile` setting: torch.compile of the UNet and the VAE decoder,
  once per shape, announced in the job's progress text (engine/memory/compiled.py).

Step noise drawn on the CPU (the CPU and NV sources) reaches the GPU from pinned memory without
making the CPU wait (engine/sampling/noise.py), live previews do not stall the GPU either (engine/runs/preview.py), and the prompts are encoded once
per job, not per batch (engine/runs/generation.py).

On other devices every piece is off: a CPU gains nothing from them or cannot run them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from engine.memory import compiled as compiling
from engine.memory.memory_modes import NONE
from engine.networks.vae import HALF_FIRST

log = logging.getLogger(__name__)

PIECES = ("channels_last", "fused_qkv", "half_vae", "compile")
# Pieces to leave off, for measuring what each gives: SD_STUDIO_FAST_PATH="-fused_qkv,-compile",
# or "off" for none at all.
FAST_PATH_ENV = "SD_STUDIO_FAST_PATH"

@dataclass(frozen=True)
class JobTraits:
    """What in a job changes the model, so that a piece must step aside for it."""

    loras: bool = False    # LoRA jobs run unfused: the merge writes the separate q/k/v weights
    patched: bool = False  # ControlNet, an extension's patch, attention slicing, a refiner: run uncompiled
    vae_tiling: bool = False  # tiled decodes see odd shapes: decode uncompiled

    @classmethod
    def of(cls, request, addons, memory) -> "JobTraits":
        """From a completed request, the add-ons it names and the job's memory modes."""
        from engine.extensions.registry import Extension
        from engine.prompts.prompt_parser import extract_extra_networks

        prompt, negative = addons.styles.apply(request.prompt, request.negative_prompt, request.styles)
        loras = bool(extract_extra_networks(prompt)[1] or extract_extra_networks(negative)[1])
        patching = any(type(item.extension).patch is not Extension.patch
                       for item in addons.extensions.active(request.mode, request.extensions))
        # A refiner moves the job's model off the device mid-sampling: it runs uncompiled.
        return cls(loras=loras, patched=bool(patching or request.active_controlnet_units
                                             or memory.attention_slicing or request.refiner is not None),
                   vae_tiling=memory.vae_tiling)


def disabled_from_env(value: str | None) -> set[str]:
    if not value:
        return set()
    if value.strip().lower() == "off":
        return set(PIECES)
    names = {part.strip().lstrip("-") for part in value.split(",") if part.strip()}
    unknown = names - set(PIECES)
    if unknown:
        raise ValueError(f"{FAST_PATH_ENV}: unknown piece(s) {sorted(unknown)}; known: {PIECES}")
    return names


class FastPath:
    """Applies the pieces to the loaded model's modules, job by job (idempotent, undoable)."""

    def __init__(self, device: torch.device | str, cache_dir: Path | None = None,
                 any_device: bool = False, compiler: compiling.Compiler | None = None):
        self.device = torch.device(device)
        self.cache_dir = cache_dir
        self.any_device = any_device  # tests run the pieces on the CPU
        self.compiler = compiler or torch.compile
        self.disabled: set[str] = disabled_from_env(os.environ.get(FAST_PATH_ENV))
        self._fused: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def pieces(self, settings) -> set[str]:
        if self.device.type != "cuda" and not self.any_device:
            return set()
        wanted = set(PIECES) - {"compile"}
        if settings["torch_compile"]:
            wanted.add("compile")
        return wanted - self.disabled

    @contextlib.contextmanager
    def job(self, model, job, settings, traits: JobTraits = JobTraits()) -> Iterator[None]:
        """The model as the pieces want it for this job; job-only changes undone after."""
        pieces = self.pieces(settings)
        pipe = model.base
        if getattr(pipe, "unet", None) is None:
            yield  # the pieces are the UNet's: a flow transformer (FLUX.1, SD 3.x) runs as it is
            return
        placement = getattr(model, "placement", None)
        if getattr(pipe.unet, "_hf_hook", None) is not None or \
                placement is not None and placement.mode != NONE:
            pieces = set()  # offloaded (a memory mode): moving weights dominates, leave it be
        self._apply_lasting(pipe, pieces)
        with contextlib.ExitStack() as stack:
            fused = self._fused.get(pipe.unet)
            if fused is not None and traits.loras:
                stack.enter_context(fused.unfused())
            if "compile" in pieces and not (traits.loras or traits.patched):
                mode = settings["torch_compile_mode"]
                self._compile(stack, pipe.unet, "UNet", mode, job)
                if not traits.vae_tiling:
                    vae = weakref.ref(pipe.vae)  # the compiled decoder must not keep its VAE alive
                    self._compile(stack, pipe.vae.decoder, "VAE decoder", mode, job,
                                  skip=lambda: bool(getattr(vae(), "use_tiling", False)))
            yield

    def undo(self, model) -> None:
        """Every lasting piece off (the benchmark's plain comparison, tests)."""
        if getattr(model.base, "unet", None) is not None:
            self._apply_lasting(model.base, set())

    def warmups(self, module) -> list[tuple[tuple, float]]:
        """(shape, seconds) of each compile of `module` so far."""
        return [item for compiled in self._compiled.get(module, {}).values() for item in compiled.warmups]

    def _apply_lasting(self, pipe, pieces: set[str]) -> None:
        layout = torch.channels_last if "channels_last" in pieces else torch.contiguous_format
        for module in (pipe.unet, pipe.vae):
            if _memory_format(module) != layout:
                module.to(memory_format=layout)
        fused = self._fused.get(pipe.unet)
        if "fused_qkv" in pieces and fused is None:
            fused = FusedProjections.of(pipe.unet)
            if fused is not None:
                self._fused[pipe.unet] = fused
        if fused is not None:
            fused.use("fused_qkv" in pieces)
        setattr(pipe.vae, HALF_FIRST, "half_vae" in pieces)

    def _compile(self, stack: contextlib.ExitStack, module, label: str, mode: str, job, skip=None) -> None:
        if "forward" in module.__dict__:
            return  # someone else wraps its forward (an offload hook): compiling would bypass it
        by_mode = self._compiled.setdefault(module, {})
        if mode not in by_mode:
            compiling.use_cache_dir(self.cache_dir)
            compiling.raise_recompile_limit()
            by_mode[mode] = compiling.CompiledForward(module, label, mode, self.compiler, skip)
        stack.enter_context(compiling.installed(module, by_mode[mode], job))


def _memory_format(module) -> torch.memory_format:
    for param in module.parameters():
        if param.dim() == 4:
            return torch.channels_last if param.is_contiguous(memory_format=torch.channels_last) \
                and not param.is_contiguous() else torch.contiguous_format
    return torch.contiguous_format


class FusedProjections:
    """A UNet's attention with fused q/k/v projections, switchable to the separate ones."""

    def __init__(self, unet, separate: dict, fused: dict):
        self.unet = weakref.proxy(unet)
        self.separate = separate  # processor name -> the processor that uses to_q, to_k, to_v
        self.fused = fused
        self.active = False

    @classmethod
    def of(cls, unet) -> "FusedProjections | None":
        from diffusers.models.attention_processor import (
            Attention,
            AttnProcessor2_0,
            FusedAttnProcessor2_0,
        )

        separate = dict(unet.attn_processors)
        if not separate or not all(type(p) is AttnProcessor2_0 for p in separate.values()):
            return None  # someone chose other processors (slicing, IP-Adapter): leave them be
        for module in unet.modules():
            if isinstance(module, Attention):
                _fuse_sharing_weights(module)
        processor = FusedAttnProcessor2_0()
        return cls(unet, separate, {name: processor for name in separate})

    def use(self, fused: bool) -> None:
        if fused != self.active:
            self.unet.set_attn_processor(dict(self.fused if fused else self.separate))
            self.active = fused

    @contextlib.contextmanager
    def unfused(self) -> Iterator[None]:
        was = self.active
        self.use(False)
        try:
            yield
        finally:
            self.use(was)


@torch.no_grad()
def _fuse_sharing_weights(attention) -> None:
    """diffusers' fuse_projections, then the separate weights made views of the fused one: the
    same numbers in memory once, and whatever changes one (a fused LoRA) changes both."""
    attention.fuse_projections(fuse=True)
    fused_name, parts = ("to_kv", ("to_k", "to_v")) if attention.is_cross_attention else \
        ("to_qkv", ("to_q", "to_k", "to_v"))
    fused = getattr(attention, fused_name)
    start = 0
    for name in parts:
        linear = getattr(attention, name)
        rows = linear.weight.shape[0]
        linear.weight = torch.nn.Parameter(fused.weight[start:start + rows], requires_grad=False)
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(fused.bias[start:start + rows], requires_grad=False)
        start += rows

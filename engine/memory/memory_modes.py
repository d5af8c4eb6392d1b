"""Memory-saving modes a job runs with: VAE tiling, attention slicing, and where the weights
live (the `memory_mode` setting: none, t5-cpu, medvram, medvram-sdxl, lowvram, auto).

Tiling and slicing come from settings and are applied to the pipeline for one job, then undone, so
toggling them takes effect on the next job with no restart. The pipelines of a checkpoint share
their modules (from_pipe), so leaving a mode switched on would leak it into every later job.
The memory mode is different: moving whole models between RAM and VRAM costs seconds, so it is
applied when it changes (engine/memory/offload.py), not per job.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

NONE, MEDVRAM, MEDVRAM_SDXL, LOWVRAM, AUTO = "none", "medvram", "medvram-sdxl", "lowvram", "auto"
# Every weight on the card but the T5-XXL text encoder of FLUX.1 / SD 3.x (about 9.5 GB in 16 bits),
# which encodes prompts on the CPU: a few seconds per new prompt (prompts are cached) instead of
# moving the transformer to and from RAM at every picture as medvram does. Models without T5: none.
T5_CPU = "t5-cpu"
# The choices of the `memory_mode` setting, named after the flags users of the mature web UIs type,
# t5-cpu, and "auto": chosen per model from its size and the card's.
MEMORY_MODES = (NONE, MEDVRAM, MEDVRAM_SDXL, LOWVRAM, AUTO, T5_CPU)
GIB = 1024 ** 3
# What auto leaves free beside the weights on the card: the activations of a 1024x1024 picture,
# the VAE's decode and CUDA's own context (measured for SDXL and FLUX with bench.memory_modes on
# cards of this project's earlier sessions: 2-3 GB), plus what the desktop keeps.
AUTO_WORKING_ROOM = 3 * GIB


def mode_for_model(mode: str, large: bool, sizes: tuple[int, ...] | None = None,
                   vram: int | None = None) -> str:
    """The mode a model runs in. medvram-sdxl is medvram for the large families (SDXL, and FLUX.1
    and SD 3.x, which are larger still) and none for SD 1.x/2.x. auto: `auto_mode` of the model's
    `sizes` (all its weights, its largest module and its T5 encoders, in bytes) on a card of
    `vram` bytes."""
    if mode == MEDVRAM_SDXL:
        return MEDVRAM if large else NONE
    if mode == AUTO:
        return NONE if sizes is None or vram is None else auto_mode(sizes[0], sizes[1], vram, *sizes[2:])
    return mode


def auto_mode(total: int, largest: int, vram: int, t5: int = 0) -> str:
    """none when every weight fits on the card with working room beside it; t5-cpu when all but
    the T5 encoder (`t5` bytes) do; medvram when the largest module does (each waits in RAM until
    it runs); lowvram otherwise (layer by layer)."""
    if total + AUTO_WORKING_ROOM <= vram:
        return NONE
    if t5 and total - t5 + AUTO_WORKING_ROOM <= vram:
        return T5_CPU
    if largest + AUTO_WORKING_ROOM <= vram:
        return MEDVRAM
    return LOWVRAM


@dataclass(frozen=True)
class MemoryModes:
    vae_tiling: bool = False         # the `sd_vae_tiling` setting
    attention_slicing: bool = False  # the `attention_slicing` setting
    # The `memory_mode` setting (placed by LoadedModel.use_memory_mode, not by `applied`); None
    # leaves the weights as they are, for work outside a job that has no say in it.
    memory_mode: str | None = None


@contextlib.contextmanager
def applied(pipe, modes: MemoryModes) -> Iterator[None]:
    """Switch the modes on for the pipeline (and every pipeline sharing its modules) inside the
    block; put back what was there before on exit, even on error."""
    with contextlib.ExitStack() as stack:
        if modes.vae_tiling:
            stack.enter_context(_vae_tiling(pipe.vae))
        if modes.attention_slicing and getattr(pipe, "unet", None) is not None:
            # (diffusers slices UNet attention only; a flow transformer's runs whole)
            stack.enter_context(_attention_slicing(pipe))
        yield


@contextlib.contextmanager
def _vae_tiling(vae) -> Iterator[None]:
    # The VAE only tiles images bigger than its tile size; smaller ones decode as before.
    was_tiling = bool(getattr(vae, "use_tiling", False))
    vae.enable_tiling()
    try:
        yield
    finally:
        if not was_tiling:
            vae.disable_tiling()


@contextlib.contextmanager
def _attention_slicing(pipe) -> Iterator[None]:
    unet = pipe.unet
    # Slicing swaps the UNet's attention processors. diffusers' disable_attention_slicing() would
    # install its defaults, dropping processors someone else put there; save and restore instead.
    saved = dict(unet.attn_processors)
    heads = [module.sliceable_head_dim for module in unet.modules()
             if module is not unet and hasattr(module, "set_attention_slice")]
    # "auto" halves each layer's heads; a layer with a single head cannot be halved.
    pipe.enable_attention_slicing("auto" if heads and min(heads) >= 2 else "max")
    try:
        yield
    finally:
        unet.set_attn_processor(saved)

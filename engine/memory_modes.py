"""Memory-saving modes a job runs with: VAE tiling and attention slicing.

Both come from settings and are applied to the pipeline for one job, then undone, so toggling
them takes effect on the next job with no restart. The pipelines of a checkpoint share their
modules (from_pipe), so leaving a mode switched on would leak it into every later job.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class MemoryModes:
    vae_tiling: bool = False         # the `sd_vae_tiling` setting
    attention_slicing: bool = False  # the `attention_slicing` setting


@contextlib.contextmanager
def applied(pipe, modes: MemoryModes) -> Iterator[None]:
    """Switch the modes on for the pipeline (and every pipeline sharing its modules) inside the
    block; put back what was there before on exit, even on error."""
    with contextlib.ExitStack() as stack:
        if modes.vae_tiling:
            stack.enter_context(_vae_tiling(pipe.vae))
        if modes.attention_slicing:
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

"""Automatic VAE tiling: whether a decode or encode fits in the memory free now, and if not, how
to split it (one image at a time, then in tiles). The one place this rule lives.

A large image is not tiled for being large: a whole decode looks best (no tile seams to blend), so
it is tiled only when the estimate of what it needs does not fit. The `sd_vae_tiling` setting
still tiles everything big enough to tile, from the start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# Measured (resident-set high-water mark, float32, SD 1.5's VAE with 128 channels in its first
# block, on the CPU): a decode peaks at about 7.6 values per output pixel per first-block channel
# (975 per pixel: 1 GB for 512x512, 4 GB for 1024x1024), an encode at about 5. Activations at full
# resolution dominate, so this scales with the pixels and that channel count.
DECODE_VALUES_PER_PIXEL_CHANNEL = 7.6
ENCODE_VALUES_PER_PIXEL_CHANNEL = 5.0
# Plan for at most this share of the free memory: the estimate is rough and the allocator
# fragments; a tiled decode that was not needed costs little, one that was needed and not done
# costs a failed attempt.
HEADROOM = 0.8


@dataclass(frozen=True)
class Plan:
    one_at_a_time: bool = False  # the VAE's slicing: one image of the batch at a time
    tiles: bool = False          # the VAE's tiling
    need: int = 0                # bytes the whole batch would need at once
    free: int | None = None      # bytes free on the device, None when unknown

    @property
    def changes_anything(self) -> bool:
        return self.one_at_a_time or self.tiles


def bytes_needed(vae, height: int, width: int, decoding: bool) -> int:
    """About how much memory one image of height x width pixels takes to decode (or encode)."""
    channels = vae.config.block_out_channels[0]
    per_channel = DECODE_VALUES_PER_PIXEL_CHANNEL if decoding else ENCODE_VALUES_PER_PIXEL_CHANNEL
    # A float16 VAE that asks to be upcast works in float32.
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    value_size = 4 if upcast else torch.finfo(vae.dtype).bits // 8
    return int(height * width * channels * per_channel * value_size)


def plan(vae, batch: int, height: int, width: int, device: torch.device, decoding: bool,
         free: int | None = None) -> Plan:
    """How to run a decode (or encode) of `batch` images of height x width pixels so it fits in
    what is free on `device` (measured now unless `free` is given)."""
    free = free_bytes(device) if free is None else free
    one = bytes_needed(vae, height, width, decoding)
    if free is None:
        return Plan(need=one * batch)
    budget = free * HEADROOM
    return Plan(one_at_a_time=batch > 1 and one * batch > budget, tiles=one > budget,
                need=one * batch, free=free)


def free_bytes(device: torch.device | str) -> int | None:
    """Memory the device can still hand out: on a GPU what the driver has free plus what torch's
    allocator holds unused; on the CPU the system's available memory. None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None

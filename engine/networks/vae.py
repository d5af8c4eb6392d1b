"""VAEs: choosing one from models/VAE, and decoding latents without black images.

The choice is "Automatic" (a VAE file named like the checkpoint, e.g. model.vae.safetensors
beside model.safetensors or in models/VAE, else the checkpoint's own), "None" (the checkpoint's
own) or a file name. An fp16 VAE that overflows to NaN is switched to fp32 for the rest of the
session and the decode is repeated, rather than returning a black image. A decode or encode that
would not fit in the memory free runs one image at a time or in tiles from the start
(engine/memory/vae_budget.py); one that runs out of memory all the same is repeated in tiles, one image
at a time, before the job gives up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.memory import memory_guard, vae_budget
from engine.memory.memory_guard import FaultPlan
from engine.devices import free_memory
from engine.errors import CheckpointError, NotFoundError, OutOfMemoryUserError
from engine.files import HashCache
from engine.memory.offload import compute_device

log = logging.getLogger(__name__)

AUTOMATIC, NONE = "Automatic", "None"
VAE_SUFFIXES = (".safetensors",)
# The smallest tile (in latents) a retry shrinks to: much smaller tiles see too little of the
# picture for the VAE's group norms, and their colours drift apart.
MIN_RETRY_TILE = 32
# An attribute the fast path sets on a VAE: decode in fp16 first even where its config asks for
# fp32 (force_upcast), since the NaN check below catches the images that overflow.
HALF_FIRST = "sd_studio_half_first"
TILED_NOTE = ("The image did not fit in memory to decode at once, so it was decoded in tiles "
              "(turning on `sd_vae_tiling` in Settings > Memory and speed does this from the start).")


@dataclass(frozen=True)
class VaeFile:
    name: str  # file name with suffix, as the ecosystem lists it ("vae-ft-mse-840000.safetensors")
    path: str

    @property
    def model_name(self) -> str:
        return Path(self.name).stem


class VaeLibrary:
    def __init__(self, folder: Path, hashes: HashCache):
        self.folder = Path(folder)
        self.hashes = hashes
        self._lock = threading.Lock()
        self._files: list[VaeFile] = []
        self.refresh()

    def refresh(self) -> list[VaeFile]:
        found = []
        if self.folder.is_dir():
            for root, dirs, files in os.walk(self.folder, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for file in sorted(files):
                    if file.lower().endswith(VAE_SUFFIXES) and not file.startswith("."):
                        path = Path(root) / file
                        found.append(VaeFile(path.relative_to(self.folder).as_posix(), str(path)))
        with self._lock:
            self._files = sorted(found, key=lambda v: v.name.lower())
        return self.files

    @property
    def files(self) -> list[VaeFile]:
        with self._lock:
            return list(self._files)

    def choices(self) -> list[str]:
        return [AUTOMATIC, NONE] + [v.name for v in self.files]

    def check_choice(self, choice: str) -> str:
        if choice in ("", AUTOMATIC, NONE) or self.find(choice):
            return choice or AUTOMATIC
        raise NotFoundError(f"VAE not found: '{choice}'. Available: {', '.join(self.choices())}",
                            "sd_vae")

    def short_hash(self, vae: VaeFile) -> str:
        return self.hashes.sha256(Path(vae.path))[:10]

    def find(self, name: str) -> VaeFile | None:
        for vae in self.files:
            if name in (vae.name, vae.model_name, vae.path):
                return vae
        return None

    def resolve(self, choice: str, checkpoint_path: str) -> VaeFile | None:
        """The file a choice means for this checkpoint; None means the checkpoint's own VAE."""
        if choice == NONE:
            return None
        if choice not in ("", AUTOMATIC):
            found = self.find(choice)
            if found is None:
                raise NotFoundError(f"VAE not found: '{choice}'", "sd_vae")
            return found
        if not checkpoint_path:
            return None
        stem = Path(checkpoint_path).with_suffix("")
        for candidate in (stem.parent / f"{stem.name}.vae.safetensors",
                          self.folder / f"{stem.name}.vae.safetensors",
                          self.folder / f"{stem.name}.safetensors"):
            if candidate.is_file():
                return VaeFile(candidate.name, str(candidate))
        return None


def load_vae_file(vae: VaeFile, config_dir: Path, dtype: torch.dtype, device: torch.device):
    from diffusers import AutoencoderKL

    try:
        model = AutoencoderKL.from_single_file(vae.path, config=str(config_dir), subfolder="vae",
                                               local_files_only=True, dtype=dtype)
    except Exception as error:
        raise CheckpointError(f"Could not load VAE '{vae.name}': {str(error).splitlines()[0][:200]}",
                              "sd_vae") from error
    return model.to(device)


def _latent_affine(vae, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """(multiplier, offset) taking UNet latents to what the VAE decodes: x * m + o."""
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
        std = torch.tensor(std, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
        return std / config.scaling_factor, mean
    return 1.0 / config.scaling_factor, getattr(config, "shift_factor", None) or 0.0


def _scaled(vae, latents: torch.Tensor) -> torch.Tensor:
    multiplier, offset = _latent_affine(vae, latents)
    return latents * multiplier + offset


def _unscaled(vae, latents: torch.Tensor) -> torch.Tensor:
    multiplier, offset = _latent_affine(vae, latents)
    return (latents - offset) / multiplier


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents to images in [-1, 1]. Upcasts to fp32 when the VAE asks for it or overflows."""
    # Where the VAE computes, not where its weights are (RAM, in an offload mode).
    latents = latents.to(compute_device(vae))
    scale = vae_scale(vae)
    with fitted(vae, latents.shape[0], latents.shape[-2] * scale, latents.shape[-1] * scale, latents.device,
                decoding=True):
        wants_fp32 = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False) \
            and not getattr(vae, HALF_FIRST, False)
        if not wants_fp32:
            images = vae.decode(_scaled(vae, latents.to(vae.dtype)), return_dict=False)[0]
            if not torch.isnan(images).any():
                return images
            log.warning("The VAE produced NaNs in %s; decoding in fp32 from now on.", vae.dtype)
        vae.to(torch.float32)
        return vae.decode(_scaled(vae, latents.float()), return_dict=False)[0]


def vae_scale(vae) -> int:
    """Pixels per latent along a side (8 for the Stable Diffusion VAEs)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@contextlib.contextmanager
def fitted(vae, batch: int, height: int, width: int, device, decoding: bool):
    """For the block: the VAE's slicing and tiling switched on as far as the memory free needs
    (see engine/memory/vae_budget.py); nothing changes when it fits, or when tiling is on already."""
    if getattr(vae, "use_tiling", False) or not hasattr(vae, "use_slicing"):
        yield
        return
    plan = vae_budget.plan(vae, batch, height, width, device, decoding)
    if not plan.changes_anything:
        yield
        return
    log.info("VAE %s of %d image(s) of %dx%d needs about %.1f GiB, %.1f GiB free: %s",
             "decode" if decoding else "encode", batch, width, height, plan.need / 2**30,
             (plan.free or 0) / 2**30, "in tiles" if plan.tiles else "one image at a time")
    saved = vae.use_slicing, vae.use_tiling
    vae.use_slicing = vae.use_slicing or plan.one_at_a_time
    vae.use_tiling = plan.tiles
    try:
        yield
    finally:
        vae.use_slicing, vae.use_tiling = saved


def decode_fitting(vae, latents: torch.Tensor, notes: list[str], faults: FaultPlan | None = None) -> torch.Tensor:
    """decode(), and when that runs out of memory, once more in tiles and one image at a time
    (a note for the user is added to `notes`). Out of memory again: OutOfMemoryUserError.
    `faults`: the job's test plan of memory faults."""
    try:
        with memory_guard.stage("vae_decode", faults=faults):
            return decode(vae, latents)
    except OutOfMemoryUserError as error:
        if not hasattr(vae, "tiled_decode"):
            raise
        memory_guard.forget_frames(error)
    # Out of the handler, so the failed attempt's tensors can go before the retry needs room.
    free_memory()
    with memory_guard.stage("vae_decode_tiled", fault="vae_decode", faults=faults), _tiling_for_retry(vae, latents):
        images = decode(vae, latents)
    if TILED_NOTE not in notes:
        notes.append(TILED_NOTE)
    return images


@contextlib.contextmanager
def _tiling_for_retry(vae, latents: torch.Tensor):
    """The VAE tiling and slicing for the block. Latents that fit in one of the VAE's own tiles
    get tiles half their size (not below MIN_RETRY_TILE), so tiling still splits the work."""
    saved = {name: getattr(vae, name) for name in
             ("use_tiling", "use_slicing", "tile_latent_min_size", "tile_sample_min_size")}
    side = max(latents.shape[-2:])
    half = max(MIN_RETRY_TILE, (side + 1) // 2)
    if side <= vae.tile_latent_min_size and half < side:
        scale = vae.tile_sample_min_size // vae.tile_latent_min_size
        vae.tile_latent_min_size, vae.tile_sample_min_size = half, half * scale
    vae.use_tiling = vae.use_slicing = True
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)


@torch.no_grad()
def encode(vae, images: torch.Tensor, faults: FaultPlan | None = None) -> torch.Tensor:
    """Images in [-1, 1] to UNet latents, deterministically (the distribution's mode), with the
    same fp32 fallback as decoding. `faults`: the job's test plan of memory faults."""
    with memory_guard.stage("vae_encode", faults=faults):
        return _encode(vae, images)


def _encode(vae, images: torch.Tensor) -> torch.Tensor:
    device = compute_device(vae)
    with fitted(vae, images.shape[0], images.shape[-2], images.shape[-1], device, decoding=False):
        wants_fp32 = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if not wants_fp32:
            latents = vae.encode(images.to(device, vae.dtype)).latent_dist.mode()
            if not torch.isnan(latents).any():
                return _unscaled(vae, latents)
            log.warning("The VAE produced NaNs in %s; encoding in fp32 from now on.", vae.dtype)
        vae.to(torch.float32)
        latents = vae.encode(images.to(device, torch.float32)).latent_dist.mode()
        return _unscaled(vae, latents)

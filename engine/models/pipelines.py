"""The loaded checkpoint and the task pipelines derived from it.

One base pipeline per checkpoint. Other tasks get pipelines made with `from_pipe`, which share the
base's modules: the weights are in memory once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from engine.models.checkpoint_cache import CheckpointCache, file_signature, size_on_disk
from engine.devices import DeviceConfig, device_memory, free_memory, upcast_sampling
from engine.errors import CheckpointError, NoModelError
from engine.families import family_of
from engine.models.loading import CONFIG_ROOT, check_loadable, is_refiner_pipeline, load_checkpoint
from engine.models.prediction import EDM, FLOW, LatentFormat, ModelPrediction
from engine.memory.memory_modes import AUTO, NONE, T5_CPU, mode_for_model
from engine.models.registry import CheckpointInfo, ModelRegistry
from engine.memory.offload import CPU, Placement, pipeline_modules, t5_encoders
from engine.models.text_encoders import TextEncoderLibrary
from engine.networks.vae import load_vae_file

if TYPE_CHECKING:  # the sampling layer sits below; only the annotation needs it
    from engine.sampling.schedules import ModelSigmas

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    info: CheckpointInfo
    family: str
    base: Any
    # The scheduler config the checkpoint came with: every job's scheduler is built from it, so
    # a sampler choice never leaks into the next job.
    scheduler_config: dict
    config_root: Path | None = None
    _derived: dict[str, Any] = field(default_factory=dict)
    _sigma_tables: dict[tuple, Any] = field(default_factory=dict)
    vae_file: Any = None         # the VaeFile in use, None for the checkpoint's own
    _own_vae: Any = None
    # The file as it was when read (checkpoint_cache.file_signature): a cached copy of a file
    # changed since is stale.
    signature: tuple | None = None
    # Where the modules live (the memory mode); by default all on the device the base is on.
    placement: Placement | None = None
    # What the file says its UNet predicts, and what jobs sample with now (the detected one, or
    # the user's override for this checkpoint, or zero terminal SNR from the noise schedule
    # setting): see use_prediction.
    detected: ModelPrediction = ModelPrediction()
    prediction: ModelPrediction | None = None
    # Each VAE's own latent format, kept while an EDM model's is set on it (by id: only this
    # model's own VAE and the one chosen from models/VAE are ever there).
    _vae_formats: dict[int, LatentFormat] = field(default_factory=dict)
    # FLUX.1 / SD 3.x: the config folder the parts were built from, the file names of the parts
    # picked beside the checkpoint (for the infotext), and the modules choice they came from.
    # (`modules()` is every torch module of the model, so the names live in `module_files`.)
    config_dir: Path | None = None
    module_files: tuple[str, ...] = ()
    module_paths: tuple[str, ...] = ()   # the same files' full paths (their hashes go in the infotext)
    modules_choice: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.placement is None:
            self.placement = Placement(self.base.device)
        if self.prediction is None:
            self.prediction = self.detected

    @property
    def prediction_type(self) -> str:
        """"epsilon", "v_prediction" or "edm" (Karras et al.'s preconditioning)."""
        return self.prediction.prediction_type

    @property
    def is_edm(self) -> bool:
        return self.prediction.prediction_type == EDM

    def use_prediction(self, prediction: ModelPrediction) -> None:
        """Sample with `prediction` from now on: the noise tables follow it, and the VAE gets an
        EDM model's latent mean, standard deviation and scale (its own back otherwise)."""
        self.prediction = prediction
        self._apply_latent_format(self.base.vae)

    def sigma_table(self, lcm: bool = False, device: torch.device | str = "cpu",
                    shift: float | None = None) -> "ModelSigmas":
        """The model's noise levels as A1111's samplers see them (LCM's 50-entry table with `lcm`),
        for the prediction in use: zero terminal SNR rescales the table as A1111 does, an EDM
        model has continuous sigmas, a flow model the flow times bent by the job's `shift`."""
        prediction = self.prediction
        key = (lcm, str(device), prediction.zero_snr, prediction.edm, shift)
        if prediction.prediction_type == FLOW:
            from engine.sampling.flow_sigmas import FlowSigmas
            if key not in self._sigma_tables:
                self._sigma_tables[key] = FlowSigmas(shift or 1.0, device)
            return self._sigma_tables[key]
        if key not in self._sigma_tables:
            from engine.sampling.noise_tables import EdmSigmas, zero_terminal_snr
            from engine.sampling.schedules import LcmSigmas, ModelSigmas

            if prediction.edm is not None:
                self._sigma_tables[key] = EdmSigmas(prediction.edm.sigma_min, prediction.edm.sigma_max, device)
                return self._sigma_tables[key]
            alphas = ModelSigmas.from_config(self.scheduler_config).alphas_cumprod.to(device)
            if prediction.zero_snr:
                alphas = zero_terminal_snr(alphas)
            self._sigma_tables[key] = (LcmSigmas if lcm else ModelSigmas)(alphas)
        return self._sigma_tables[key]

    def _apply_latent_format(self, vae) -> None:
        if id(vae) not in self._vae_formats:
            config = vae.config
            mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
            self._vae_formats[id(vae)] = LatentFormat(
                None if mean is None else tuple(mean), None if std is None else tuple(std),
                config.scaling_factor)
        wanted = self.prediction.latents or self._vae_formats[id(vae)]
        vae.register_to_config(latents_mean=None if wanted.mean is None else list(wanted.mean),
                               latents_std=None if wanted.std is None else list(wanted.std),
                               scaling_factor=wanted.scaling_factor)

    @property
    def device(self) -> torch.device:
        """Where the model computes: with an offload mode its weights wait in RAM between uses,
        so use this, not the pipeline's or a module's device, for tensors the model works on."""
        return self.placement.device

    def use_memory_mode(self, mode: str | None) -> bool:
        """Put the weights as the `memory_mode` setting says (a no-op when they are already, or
        on the CPU; None: as they are); True when something was moved. Called before each job:
        a VAE chosen since the last one is also placed here."""
        mode = self.placement.mode if mode is None else self.mode_for(mode)
        return self.placement.ensure(mode, self.pipelines())

    def mode_for(self, mode: str) -> str:
        """The memory mode this model runs in when the setting is `mode` (medvram-sdxl and auto
        depend on the model)."""
        if mode == T5_CPU and not t5_encoders(pipeline_modules(self.base)):
            return NONE   # nothing to keep on the CPU: the SD families have no T5
        # FLUX.1 and SD 3.x are bigger than SDXL: medvram-sdxl offloads them too.
        if mode != AUTO:
            return mode_for_model(mode, self.is_sdxl or self.is_flow)
        return mode_for_model(mode, True, self.weight_sizes(), device_memory(self.placement.device))

    def weight_sizes(self) -> tuple[int, int, int]:
        """(all weights, the largest module's, the T5 encoders') in bytes, as they are stored now."""
        def size(module) -> int:
            return sum(t.numel() * t.element_size() for t in module.state_dict().values())

        sizes = [size(module) for module in self.modules()]
        t5 = sum(size(module) for module in t5_encoders(pipeline_modules(self.base)).values())
        return sum(sizes), max(sizes, default=0), t5

    def pipelines(self) -> list:
        """The base pipeline, then those made from it (which share its modules)."""
        return [self.base, *self._derived.values()]

    def use_vae(self, choice: str, library) -> Any:
        """Put the chosen VAE into this model's pipelines; returns its VaeFile or None."""
        wanted = library.resolve(choice, self.info.path)
        if self._own_vae is None:
            self._own_vae = self.base.vae
        if wanted is None:
            self._set_vae(self._own_vae)
        elif self.vae_file is None or self.vae_file.path != wanted.path:
            # Loaded where the weights rest (RAM in an offload mode); use_memory_mode places it.
            config_dir = self.config_dir if self.is_flow else self.config_root / self.family
            module = load_vae_file(wanted, config_dir, self._own_vae.dtype,
                                   self.placement.resting_device)
            if not getattr(self._own_vae.config, "force_upcast", True):  # --precision half
                module.register_to_config(force_upcast=False)
            self._set_vae(module)
        self.vae_file = wanted
        return wanted

    def _set_vae(self, module) -> None:
        if module is not self._own_vae:  # just loaded: what was kept under its id is another's
            self._vae_formats.pop(id(module), None)
        self._apply_latent_format(module)
        # Pipelines made with from_pipe hold their own reference to the VAE: update them all.
        for pipe in [self.base, *self._derived.values()]:
            pipe.vae = module

    def modules(self) -> list[torch.nn.Module]:
        """Every torch module of this model, once: the pipeline's and the checkpoint's own VAE
        while another one is in use (task pipelines share the base's modules)."""
        found = [m for m in self.base.components.values() if isinstance(m, torch.nn.Module)]
        if self._own_vae is not None and all(self._own_vae is not m for m in found):
            found.append(self._own_vae)
        return found

    def set_aside(self) -> None:
        """Into CPU RAM for the checkpoint cache, every offload hook off (mode none): the mode
        may differ when it comes back, and use_memory_mode then places it from RAM."""
        self.placement.release(self.pipelines())
        for module in self.modules():
            # nn.Module.to: diffusers' own .to warns about float32 modules on every move.
            torch.nn.Module.to(module, CPU)

    @property
    def vae_scale_factor(self) -> int:
        return int(getattr(self.base, "vae_scale_factor", 8))

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def is_flow(self) -> bool:
        """A rectified-flow transformer model (FLUX.1, SD 3.x)."""
        return family_of(self.family).flow

    @property
    def is_refiner(self) -> bool:
        """An SDXL refiner (one OpenCLIP-G text encoder, aesthetic-score conditioning)."""
        return is_refiner_pipeline(self.base)

    @property
    def latent_space(self) -> str:
        """Models of one latent space can hand latents to each other (a refiner, A1111-style):
        SD 1.x and 2.x share the SD VAE's, SDXL and its refiner SDXL's."""
        if self.is_flow:
            return self.family   # FLUX's and SD 3's 16-channel latents are each their own
        return "sdxl" if self.is_sdxl else "sd"

    @property
    def is_inpainting(self) -> bool:
        """A dedicated inpainting model: its UNet also takes the mask and the masked image."""
        return family_of(self.family).is_inpainting(self.base)

    def pipeline_for(self, task: str):
        if task == "txt2img" or self.is_flow:
            # Flow models: the sampler drives the base pipeline's parts for every task.
            return self.base
        if task not in self._derived:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            maker = {"img2img": AutoPipelineForImage2Image, "inpaint": AutoPipelineForInpainting}[task]
            pipe = maker.from_pipe(self.base)
            pipe.set_progress_bar_config(disable=True)
            self._derived[task] = pipe
        return self._derived[task]


class ModelManager:
    """Loads, switches and unloads checkpoints. Only the GPU lane calls load/unload.

    A checkpoint switched away from is kept in `cache` (checkpoint_cache.py) when the
    `sd_checkpoint_cache` setting and free RAM allow; switching back to it reads nothing."""

    def __init__(self, registry: ModelRegistry, device: DeviceConfig, config_root: Path = CONFIG_ROOT,
                 allow_unsafe: bool = False, cache: CheckpointCache | None = None,
                 memory_mode: Callable[[], str] | None = None,
                 text_encoders: TextEncoderLibrary | None = None):
        self.registry = registry
        # The parts picked beside FLUX.1 / SD 3.x transformers: models/text_encoder and
        # models/VAE, by default beside the first checkpoint folder.
        if text_encoders is None:
            models = registry.folders[0].parent if registry.folders else None
            text_encoders = TextEncoderLibrary(models / "text_encoder" if models else None,
                                               models / "VAE" if models else None)
        self.text_encoders = text_encoders
        # The modules choice in use (Forge's forge_additional_modules): file names or paths.
        self.modules_choice: tuple[str, ...] = ()
        # The choice remembered for a checkpoint (None: the last one given); the Engine sets it
        # from the settings (checkpoint_modules, forge_additional_modules).
        self.modules_for: Callable[[CheckpointInfo], tuple[str, ...] | None] = lambda info: None
        self.device = device
        # The `memory_mode` setting as it is now: a checkpoint loads straight into it.
        self.memory_mode = memory_mode or (lambda: NONE)
        self.config_root = Path(config_root)
        self.allow_unsafe = allow_unsafe
        self.cache = cache if cache is not None else CheckpointCache()
        self._lock = threading.RLock()
        self._current: LoadedModel | None = None
        self.last_error: str | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            folder = self.registry.folders[0] if self.registry.folders else "models/Stable-diffusion"
            if self.registry.checkpoints:
                hint = "No checkpoint is loaded: pick one in the checkpoint list."
            else:
                hint = (f"No checkpoint is loaded. Put a .safetensors checkpoint into {folder} and pick "
                        "it in the checkpoint list, or start with --demo.")
            if self.last_error:
                hint += f" (Last load failed: {self.last_error})"
            raise NoModelError(hint, "checkpoint")
        return model

    def load(self, wanted: str, modules=None) -> LoadedModel:
        """Make `wanted` (a title, name or hash) the current model; keep the old one on failure.
        `modules`: the files picked beside a FLUX.1 / SD 3.x checkpoint (names or paths in
        models/text_encoder and models/VAE; empty: picked automatically; None: the choice given
        last). The same checkpoint with another choice loads again."""
        with self._lock:
            info = self.registry.find(wanted)
            choice = self._remembered(info) if modules is None else _choice_tuple(modules)
            if self._current and self._current.info.path == info.path and \
                    self._current.info.kind == info.kind and self._fits(self._current, choice):
                self.modules_choice = choice
                return self._current
            cached = self.cache.take(info)
            if cached is not None and self._fits(cached, choice):
                self.modules_choice = choice
                return self._switch_to(cached)
            del cached  # loaded with other modules: read again below
            try:
                check_loadable(info, self.allow_unsafe)
                self.resolve_modules(info, choice)   # a bad choice is refused before anything unloads
                info = self.registry.with_hash(info)
            except CheckpointError as error:
                self.last_error = error.message
                raise
            previous_choice = self._current.modules_choice if self._current is not None else ()
            previous = self._set_aside()
            # Room for the new one: the oldest cached models go first.
            self.cache.trim(reserve=size_on_disk(info))
            try:
                self._current = self._load(info, choice)
                self.last_error = None
                self.modules_choice = choice
            except BaseException as error:
                self.last_error = getattr(error, "message", str(error))
                if previous is not None:
                    self._restore(previous, previous_choice)
                raise
            if previous is not None and previous.path == info.path:
                # The same checkpoint with its old modules: not worth its memory any more.
                self.cache.take(info)
                free_memory()
            self.cache.trim()  # what the new model really took may leave too little free
            return self._current

    @contextlib.contextmanager
    def borrowed(self, wanted: str) -> Iterator[LoadedModel]:
        """For the block, checkpoint `wanted` on the device (a hires pass with another
        checkpoint), while the current model waits in RAM; afterwards it is back, the very same
        object, since a running job holds it. The current model stays the one everyone else sees
        (the borrowed one belongs to this job alone). Only the GPU lane calls this, in a job."""
        with self._lock:
            home, info = self.require(), self.registry.find(wanted)
            if home.info.path == info.path and home.info.kind == info.kind:
                yield home
                return
            home.set_aside()  # into RAM, offload hooks off, so the other fits where it ran
            other = None
            try:
                other = self.cache.take(info)
                if other is not None:
                    other.use_memory_mode(self.memory_mode())
                else:
                    check_loadable(info, self.allow_unsafe)
                    self.cache.trim(reserve=size_on_disk(info))
                    other = self._load(self.registry.with_hash(info), self._remembered(info))
                yield other
            finally:
                if other is not None:
                    # Off the device before the job's model comes back (the job may still hold
                    # references to it); into the cache when it fits there.
                    other.set_aside()
                    if not self.cache.keep(other):
                        free_memory()
                    del other
                home.use_memory_mode(self.memory_mode())

    def _set_aside(self) -> CheckpointInfo | None:
        """Move the current model into the cache (or let it go); returns what it was."""
        model, self._current = self._current, None
        if model is None:
            return None
        info = model.info
        log.info("switching away from %s", info.title)
        kept = self.cache.keep(model)
        del model
        if not kept:  # that was the last reference: give its memory back now
            free_memory()
        return info

    def _switch_to(self, model: LoadedModel) -> LoadedModel:
        previous = self._set_aside()
        try:
            model.use_memory_mode(self.memory_mode())
        except BaseException:
            log.exception("could not move %s back to %s", model.info.title, self.device.device)
            del model
            free_memory()
            if previous is not None:
                self._restore(previous)
            raise
        log.info("switched to %s from RAM", model.info.title)
        self._current = model
        self.last_error = None
        self.cache.trim()
        return model

    @staticmethod
    def _fits(model: LoadedModel, choice: tuple[str, ...]) -> bool:
        """Whether a loaded model serves this modules choice (only flow models take modules)."""
        return not model.is_flow or model.info.kind == "diffusers" or model.modules_choice == choice

    def _remembered(self, info: CheckpointInfo) -> tuple[str, ...]:
        remembered = self.modules_for(info)
        return self.modules_choice if remembered is None else _choice_tuple(remembered)

    def resolve_modules(self, info: CheckpointInfo, choice) -> dict[str, Path]:
        """{part: file} the modules choice gives a FLUX.1 / SD 3.x single file ({} for others)."""
        from engine.models.flow_pipelines import resolve_flow_modules

        return resolve_flow_modules(info, self.text_encoders, self.config_root, choice, self.allow_unsafe)

    def _load(self, info: CheckpointInfo, choice: tuple[str, ...] = ()) -> LoadedModel:
        log.info("loading checkpoint %s", info.title)
        parts = self.resolve_modules(info, choice)
        # Taken before reading: a file rewritten during the load then counts as changed.
        signature = file_signature(info)
        mode, placement = self.memory_mode(), Placement(self.device.device)
        # In an offload mode the weights load into RAM: a model that needs offloading may not fit
        # in VRAM even for a moment. (medvram-sdxl loads there too: the family is not known yet.)
        into = self.device if placement.effective(mode) == NONE else \
            dataclasses.replace(self.device, device=torch.device("cpu"))
        loaded = load_checkpoint(info, into, self.config_root, self.allow_unsafe, parts)
        if self.device.upcast_sampling and hasattr(loaded.pipe, "unet"):
            upcast_sampling(loaded.pipe.unet)
        config = dict(loaded.pipe.scheduler.config)
        model = LoadedModel(info, loaded.family, loaded.pipe, config, config_root=self.config_root,
                            placement=placement, signature=signature, detected=loaded.prediction,
                            config_dir=loaded.config_dir, module_files=tuple(path.name for path in parts.values()),
                            module_paths=tuple(str(path) for path in parts.values()),
                            modules_choice=choice)
        model.use_memory_mode(mode)
        return model

    def _restore(self, info: CheckpointInfo, choice: tuple[str, ...] = ()) -> None:
        """Bring back the model a failed switch left, from the cache if it is there."""
        cached = self.cache.take(info)
        try:
            if cached is not None:
                cached.use_memory_mode(self.memory_mode())
                self._current = cached
            else:
                self._current = self._load(info, choice)
        except BaseException:
            log.exception("could not reload the previous checkpoint %s", info.title)

    def unload(self) -> None:
        """Free the loaded model and every cached one."""
        with self._lock:
            if self._current is not None:
                log.info("unloading checkpoint %s", self._current.info.title)
            self._current = None
            self.cache.clear()
            free_memory()


def _choice_tuple(modules) -> tuple[str, ...]:
    """A modules choice as a tuple of entries (one name or path, or a list of them)."""
    entries = [modules] if isinstance(modules, (str, Path)) else list(modules)
    return tuple(str(entry).strip() for entry in entries if str(entry).strip())

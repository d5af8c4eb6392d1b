"""What a generation job is told by the settings (RunOptions, OutputPolicy) and what it hands
back (GenerationResult, with each image's infotext parameters)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from PIL import Image

from engine.sampling import samplers
from engine.memory.memory_modes import MemoryModes
from engine.models.preview_models import APPROX_CHEAP, APPROX_NN, TAESD
from engine.models.prediction import OVERRIDES_KEY
from engine.models.registry import CheckpointInfo
from engine.models.pipelines import LoadedModel
from engine.request import GenerationRequest
from engine.version import VERSION


# How live previews are made (the show_progress_type setting, with the web UI's values in its
# order): the VAE's full decode, a small convolutional approximation, a cheap linear one of the
# latents' colours, or a tiny autoencoder. engine/runs/preview.py makes them.
FULL = "Full"
PREVIEW_METHODS = (FULL, APPROX_NN, APPROX_CHEAP, TAESD)


@dataclass(frozen=True)
class RunOptions:
    """Settings a run reads, fixed when the job is submitted (with its override_settings)."""

    eta_defaults: Mapping[str, float] = field(default_factory=lambda: {"eta_ancestral": 1.0, "eta_ddim": 0.0})
    always_discard: bool = False  # always_discard_next_to_last_sigma
    # sigma_min, sigma_max, rho (0: the model's / the schedule's own), beta_dist_alpha/beta.
    schedule_options: Mapping[str, float] = field(default_factory=dict)
    # UniPC's variant, skip_type, order and lower_order_final (A1111's uni_pc_* settings).
    uni_pc: Mapping[str, Any] = field(default_factory=dict)
    sgm_noise_multiplier: bool = False
    # The per-checkpoint prediction overrides (engine/models/prediction.py).
    prediction_overrides: Mapping[str, str] = field(default_factory=dict)
    img2img_extra_noise: float = 0.0
    img2img_color_correction: bool = False
    upscaler_for_img2img: str = "None"
    enable_pnginfo: bool = True
    # Stages before which a copy of each image is saved: "face-restoration", "highres-fix",
    # "color-correction" (the save_images_before_* settings).
    save_before: frozenset = frozenset()
    # The refiner (engine/runs/refiner.py): switch by the share of steps done rather than by the
    # noise level reached; which passes of a hires-fix job it acts in; the aesthetic scores an
    # SDXL refiner is conditioned with (prompt, negative prompt).
    refiner_by_steps: bool = False
    hires_refiner_pass: str = "second pass"
    refiner_aesthetic_scores: tuple[float, float] = (6.0, 2.5)
    # The ControlNet units' detected maps: returned after the pictures; saved with them.
    return_detected_maps: bool = True
    save_detected_maps: bool = True


@dataclass(frozen=True)
class OutputPolicy:
    """What to do with finished images (from the settings and the request)."""

    save_images: bool = True
    save_grid: bool = True
    make_grid: bool = True
    preview_every: int = 0  # 0: no live previews
    preview_method: str = APPROX_CHEAP  # one of PREVIEW_METHODS
    memory: MemoryModes = MemoryModes()
    run: RunOptions = RunOptions()

    def inner_pass(self) -> "OutputPolicy":
        """For a pass inside a job (hires fix, a tile): nothing saved or colour-corrected;
        previews, memory modes and sampler settings as the job's."""
        run = dataclasses.replace(self.run, img2img_color_correction=False, save_before=frozenset())
        return OutputPolicy(save_images=False, save_grid=False, make_grid=False,
                            preview_every=self.preview_every, preview_method=self.preview_method,
                            memory=self.memory, run=run)


@dataclass
class GenerationResult:
    request: GenerationRequest
    model: CheckpointInfo
    images: list[Image.Image]
    seeds: list[int]
    subseeds: list[int]
    infotexts: list[str]
    paths: list[Path | None] = field(default_factory=list)
    grid: Image.Image | None = None
    grid_path: Path | None = None
    interrupted: bool = False
    job_timestamp: str = ""
    prompt: str = ""            # after styles: what the images were made from
    negative_prompt: str = ""
    extra_params: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inpainting_model: bool = False  # made by a dedicated inpainting model (9-channel UNet, FLUX.1 Fill)
    ignored_settings: list[str] = field(default_factory=list)  # override_settings not used
    pnginfo: bool = True  # the enable_pnginfo setting: images carry their infotext
    grid_infotext: str | None = None  # the grid's own (a script's); None: the first image's
    detected_maps: list[Image.Image] = field(default_factory=list)  # ControlNet maps, after the pictures

    def gallery(self) -> list[tuple[Image.Image, str]]:
        """(image, infotext) pairs as a gallery shows them: the grid first when there is one, the
        ControlNet units' detected maps last (no infotext of their own)."""
        items = list(zip(self.images, self.infotexts))
        if self.grid is not None:
            items.insert(0, (self.grid, self.grid_text))
        return items + [(detected, "") for detected in self.detected_maps]

    @property
    def grid_text(self) -> str:
        if self.grid_infotext is not None:
            return self.grid_infotext
        return self.infotexts[0] if self.infotexts else ""


def image_params(request: GenerationRequest, model: LoadedModel, seed: int, subseed: int,
                 extra: dict[str, Any]) -> dict[str, Any]:
    """The `Key: value` part of one image's infotext."""
    sampler, schedule = samplers.resolve(request.sampler_name, request.scheduler)
    effective = samplers.effective_schedule(sampler, schedule)
    params: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": sampler.name,
        "Schedule type": None if effective == "model" else effective,
        "CFG scale": request.cfg_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.info.short_hash,
        "Model": model.info.model_name,
    }
    if request.subseed_strength > 0:
        params["Variation seed"] = subseed
        params["Variation seed strength"] = request.subseed_strength
    if request.seed_resize:
        params["Seed resize from"] = "{}x{}".format(*request.seed_resize)
    params.update(extra)
    params["Version"] = VERSION
    return params


def hash_list(hashes: dict[str, str]) -> str | None:
    return ", ".join(f"{name}: {short}" for name, short in hashes.items()) or None


def policy_from_settings(settings: Mapping[str, Any], request: GenerationRequest, make_grid: bool) -> OutputPolicy:
    """What a job is told by the settings as they are now (with its override_settings) and its request."""
    preview_every = settings["show_progress_every_n_steps"] if settings["live_previews_enable"] else 0
    return OutputPolicy(
        save_images=request.save_images and settings["samples_save"],
        save_grid=request.save_grid and settings["grid_save"],
        make_grid=make_grid,
        preview_every=preview_every,
        preview_method=settings["show_progress_type"],
        memory=MemoryModes(vae_tiling=settings["sd_vae_tiling"],
                           attention_slicing=settings["attention_slicing"],
                           memory_mode=settings["memory_mode"]),
        run=RunOptions(
            eta_defaults={"eta_ancestral": settings["eta_ancestral"], "eta_ddim": settings["eta_ddim"]},
            always_discard=settings["always_discard_next_to_last_sigma"],
            schedule_options=samplers.schedule_parameters(settings),
            uni_pc={"variant": settings["uni_pc_variant"], "skip_type": settings["uni_pc_skip_type"],
                    "order": settings["uni_pc_order"], "lower_order_final": settings["uni_pc_lower_order_final"]},
            sgm_noise_multiplier=settings["sgm_noise_multiplier"],
            prediction_overrides=dict(settings[OVERRIDES_KEY]),
            img2img_extra_noise=settings["img2img_extra_noise"],
            img2img_color_correction=settings["img2img_color_correction"],
            upscaler_for_img2img=settings["upscaler_for_img2img"],
            enable_pnginfo=settings["enable_pnginfo"],
            save_before=frozenset(stage for stage in ("face-restoration", "highres-fix", "color-correction")
                                  if settings["save_images_before_" + stage.replace("-", "_")]),
            refiner_by_steps=settings["refiner_switch_by_sample_steps"],
            hires_refiner_pass=settings["hires_fix_refiner_pass"],
            refiner_aesthetic_scores=(settings["sdxl_refiner_high_aesthetic_score"],
                                      settings["sdxl_refiner_low_aesthetic_score"]),
            return_detected_maps=not settings["control_net_no_detectmap"],
            save_detected_maps=settings["control_net_detectmap_autosaving"],
        ),
    )

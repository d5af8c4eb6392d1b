"""The one typed description of a generation job.

The UI and the API each build a `GenerationRequest` in one place; validation lives here so both
refuse bad input with the same words.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from PIL import Image

from engine.sampling import samplers
from engine.prompts.conditioning import EMPHASIS_MODES, MAX_PROMPT_CHARS
from engine.errors import RequestError
from engine.validation import Flag, Number, Text, Whole
from engine import image_prep
from engine.image_prep import MASKED_CONTENT, RESIZE_MODES
from engine.models.prediction import NOISE_SCHEDULES

MAX_SEED = 2**32 - 1
MIN_SIZE, MAX_SIZE, SIZE_STEP = 64, 2048, 8
MAX_STEPS = 150
MAX_SEED_RESIZE = 8192
MAX_SCHEDULE_STEPS = 1000  # the models' training timesteps: no schedule has more steps  # "Resize seed from" any size a picture may have had
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_NAME_CHARS = 1000  # a checkpoint's title (a path under models/ and its hash)
MIN_CFG, MAX_CFG = 1.0, 30.0
MAX_CLIP_SKIP = 12
MAX_SHIFT = 100.0

# Latent upscaler name -> (torch interpolation mode, antialias), as the ecosystem names them.
LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False),
}
MAX_MASK_BLUR = 64
MAX_PADDING = 256

# The ranges the ecosystem's sliders allow (its API takes anything; these keep the math sane).
SAMPLER_PARAMETER_RANGES = {
    "eta": (0.0, 2.0), "s_churn": (0.0, 100.0), "s_tmin": (0.0, 1000.0), "s_tmax": (0.0, 1000.0),
    "s_noise": (0.0, 2.0), "s_min_uncond": (0.0, 100.0),
}
IMAGE_CFG_SCALE_RANGE = (0.0, 3.0)  # instruct-pix2pix's image guidance (an img2img option)

# The rules of the fields every request has (checked in this order by validate(); the API's
# documentation shows them as the bodies' limits).
FIELD_RULES = {
    "prompt": Text(MAX_PROMPT_CHARS), "negative_prompt": Text(MAX_PROMPT_CHARS),
    "width": Whole(MIN_SIZE, MAX_SIZE, SIZE_STEP), "height": Whole(MIN_SIZE, MAX_SIZE, SIZE_STEP),
    "steps": Whole(1, MAX_STEPS), "batch_size": Whole(1, MAX_BATCH_SIZE), "n_iter": Whole(1, MAX_BATCH_COUNT),
    "cfg_scale": Number(MIN_CFG, MAX_CFG), "seed": Whole(-1, MAX_SEED), "subseed": Whole(-1, MAX_SEED),
    "subseed_strength": Number(0.0, 1.0), "clip_skip": Whole(0, MAX_CLIP_SKIP),
    # "CFG Rescale" phi (0: plain guidance), the range of the ecosystem's sliders.
    "cfg_rescale": Number(0.0, 1.0),
    # FLUX.1-dev's guidance input (Forge's slider range) and the flow shift (0: the family's own).
    "distilled_cfg_scale": Number(0.0, MAX_CFG), "shift": Number(0.0, MAX_SHIFT),
}

# Fields left None stand for the loaded model's own value.
MODEL_DEFAULT_FIELDS = ("distilled_cfg_scale",)

# img2img covers every edit of an existing picture: with a mask it is inpainting.
MODES = ("txt2img", "img2img")
# A1111's noise sources (its `randn_source` setting): GPU (the default: torch's CUDA generator, and
# on any other device its CPU reproduction, so a seed means the same picture everywhere), CPU
# (torch's CPU generator) and NV (that reproduction everywhere).
RANDN_SOURCES = ("GPU", "CPU", "NV")


@dataclass(frozen=True)
class Img2ImgOptions:
    """What an img2img or inpainting job adds to a request (its `img2img` part): the pictures to
    start from, the mask, and how they are used. Image i of a job starts from init_images[i % n]."""

    init_images: tuple[Image.Image, ...] = ()
    mask: Image.Image | None = None          # white = repaint
    resize_mode: int = 0                     # index into image_prep.RESIZE_MODES
    denoising_strength: float = 0.75
    mask_blur: int = 4
    inpainting_fill: int = 1                 # index into image_prep.MASKED_CONTENT
    inpaint_full_res: bool = False           # "Only masked"
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    initial_noise_multiplier: float = 1.0
    # img2img runs exactly `steps` steps, the end of a schedule of steps / strength (the
    # img2img_fix_steps setting; always in a hires fix pass), rather than steps x strength.
    exact_steps: bool = False
    # How "Just resize (latent upscale)" scales the latents (a hires-fix latent upscaler name).
    latent_upscale_mode: str = "Latent"
    # Instruct-pix2pix models' image guidance; no other model uses it.
    image_cfg_scale: float | None = None

    def replace(self, **changes: Any) -> "Img2ImgOptions":
        return dataclasses.replace(self, **changes)

    @property
    def is_inpaint(self) -> bool:
        return self.mask is not None

    def sampling_steps(self, steps: int) -> int:
        """How many sampling steps a job of `steps` steps runs, as A1111 counts them: t_enc + 1
        steps at the end of a `steps` schedule, t_enc = int(min(strength, 0.999) x steps) (so at
        least one, and all of them at strength 1), or exactly `steps` with `exact_steps`."""
        if self.exact_steps:
            return steps
        return int(min(self.denoising_strength, 0.999) * steps) + 1

    def schedule_steps(self, steps: int) -> int:
        """The steps of the schedule a job of `steps` steps runs the end of (no more than the
        model's timesteps)."""
        if self.exact_steps and self.denoising_strength > 0:
            return min(MAX_SCHEDULE_STEPS, int(steps / min(self.denoising_strength, 0.999)))
        return steps

    def validate(self) -> "Img2ImgOptions":
        """Raise RequestError naming the first bad field; return self when all is well."""
        if not self.init_images:
            raise RequestError("img2img needs an init image: upload the picture to change",
                               "init_images")
        for index, image in enumerate(self.init_images):
            if not isinstance(image, Image.Image):
                raise RequestError(f"init_images[{index}] is not an image", "init_images")
        if self.mask is not None and not isinstance(self.mask, Image.Image):
            raise RequestError("mask is not an image", "mask")
        _check_number(self.denoising_strength, "denoising_strength", 0.0, 1.0)
        if self.exact_steps and self.denoising_strength <= 0:
            raise RequestError("Denoising strength 0 changes nothing: raise it above 0", "denoising_strength")
        _check_int(self.resize_mode, "resize_mode", 0, len(RESIZE_MODES) - 1)
        _check_int(self.inpainting_fill, "inpainting_fill", 0, len(MASKED_CONTENT) - 1)
        _check_int(self.mask_blur, "mask_blur", 0, MAX_MASK_BLUR)
        _check_int(self.inpaint_full_res_padding, "inpaint_full_res_padding", 0, MAX_PADDING)
        _check_number(self.initial_noise_multiplier, "initial_noise_multiplier", 0.0, 1.5)
        if self.latent_upscale_mode not in LATENT_UPSCALE_MODES:
            raise RequestError(f"Unknown latent upscale mode '{self.latent_upscale_mode}'. Choose one "
                               f"of: {', '.join(LATENT_UPSCALE_MODES)}", "latent_upscale_mode")
        for name in ("inpaint_full_res", "inpainting_mask_invert"):
            Flag().check(getattr(self, name), name)
        if self.image_cfg_scale is not None:
            _check_number(self.image_cfg_scale, "image_cfg_scale", *IMAGE_CFG_SCALE_RANGE)
        return self


# The refiner's "Switch at": the fraction of the sampling done when it takes over (1: never),
# A1111's slider range and default.
REFINER_SWITCH_RANGE = (0.01, 1.0)
DEFAULT_REFINER_SWITCH_AT = 0.8


@dataclass(frozen=True)
class RefinerChoice:
    """A refiner as A1111 1.10 has it: `checkpoint` (a title, name or hash) takes over the job's
    sampling when `switch_at` of it is done, continuing the same schedule (engine/runs/refiner.py)."""

    checkpoint: str
    switch_at: float = DEFAULT_REFINER_SWITCH_AT

    def validate(self) -> "RefinerChoice":
        Text(MAX_NAME_CHARS).check(self.checkpoint, "refiner_checkpoint")
        if not self.checkpoint.strip():
            raise RequestError("refiner_checkpoint: name the refiner's checkpoint", "refiner_checkpoint")
        Number(*REFINER_SWITCH_RANGE).check(self.switch_at, "refiner_switch_at")
        return self

    def replace(self, **changes: Any) -> "RefinerChoice":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ScriptChoice:
    """The script that runs a job (its name or title, engine.extensions.script) and its options."""

    name: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def validate(self) -> "ScriptChoice":
        if not isinstance(self.name, str) or not isinstance(self.options, Mapping):
            raise RequestError("script must be a script's name, with its options as an object", "script_name")
        return self


@dataclass(frozen=True)
class GenerationRequest:
    mode: str = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    sampler_name: str = samplers.DEFAULT_SAMPLER
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    cfg_rescale: float = 0.0
    # FLUX.1's guidance input; None: the model's own (3.5 for dev, 30 for Fill; engine/families/flux.py).
    distilled_cfg_scale: float | None = None
    shift: float = 0.0    # the flow shift of FLUX.1 / SD 3.x; 0: the family's own
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1
    styles: tuple[str, ...] = ()
    # 0 / "" mean "as in the settings"; Engine.submit fills them in, so a queued job is fixed.
    clip_skip: int = 0
    emphasis: str = ""
    vae: str = ""
    randn_source: str = ""
    noise_schedule: str = ""  # A1111's sd_noise_schedule: "Default" or "Zero Terminal SNR"
    save_images: bool = True
    save_grid: bool = True
    # Sampler parameters, for the samplers that use them (samplers.SamplerParams); None: the
    # setting of the same name (eta: eta_ancestral, or eta_ddim for DDIM), which
    # Engine.complete fills in so a queued job is fixed.
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None      # 0: no upper bound
    s_noise: float | None = None
    s_min_uncond: float | None = None  # skip the negative prompt below this sigma (0: never)
    eta_noise_seed_delta: int | None = None  # "ENSD": step noise seeded with seed + this
    # Leave <lora:...> tags in the prompt unapplied (as text they are removed all the same).
    disable_extra_networks: bool = False
    # ControlNet units (engine.controlnet.units.ControlUnit); only enabled ones act.
    controlnet_units: tuple = ()
    # Per-extension options: {extension name: {field: value}}.
    extensions: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    # img2img and inpainting (mode "img2img", which needs it); None for txt2img.
    img2img: Img2ImgOptions | None = None
    # The script that runs this job, with its options (None: none).
    script: ScriptChoice | None = None
    # The refiner that takes over part-way (None: none).
    refiner: RefinerChoice | None = None

    def replace(self, **changes: Any) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)

    def with_img2img(self, **changes: Any) -> "GenerationRequest":
        """This request as an img2img one, its img2img part (a default one if it has none) with
        `changes` (Img2ImgOptions fields)."""
        part = self.img2img if self.img2img is not None else Img2ImgOptions()
        return dataclasses.replace(self, mode="img2img", img2img=part.replace(**changes))

    @property
    def images_per_job(self) -> int:
        return self.batch_size * self.n_iter

    def validate(self) -> "GenerationRequest":
        """Raise RequestError naming the first bad field; return self when all is well."""
        if self.mode not in MODES:
            raise RequestError(f"Unknown mode '{self.mode}'. Known: {', '.join(MODES)}", "mode")
        for name, rule in FIELD_RULES.items():
            if getattr(self, name) is None and name in MODEL_DEFAULT_FIELDS:
                continue
            rule.check(getattr(self, name), name)
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            value = getattr(self, name)
            _check_int(value, name, -1, MAX_SEED_RESIZE)
            if value > 0 and value % SIZE_STEP:
                raise RequestError(f"{name} must be a multiple of {SIZE_STEP}, got {value}", name)
        samplers.resolve(self.sampler_name, self.scheduler)
        self._validate_sampler_parameters()
        if self.emphasis not in ("",) + EMPHASIS_MODES:
            raise RequestError(f"Unknown emphasis mode '{self.emphasis}'. Choose one of: "
                               f"{', '.join(EMPHASIS_MODES)}", "emphasis")
        if self.noise_schedule not in ("",) + NOISE_SCHEDULES:
            raise RequestError(f"Unknown noise schedule '{self.noise_schedule}'. Choose one of: "
                               f"{', '.join(NOISE_SCHEDULES)}", "noise_schedule")
        if self.randn_source not in ("",) + RANDN_SOURCES:
            raise RequestError(f"Unknown random number source '{self.randn_source}'. Choose one of: "
                               f"{', '.join(RANDN_SOURCES)}", "randn_source")
        if isinstance(self.styles, str) or not all(isinstance(s, str) for s in self.styles):
            raise RequestError("styles must be a list of style names", "styles")
        if not isinstance(self.vae, str):
            raise RequestError("vae must be a VAE name", "vae")
        self._validate_img2img()
        self._validate_controlnet()
        if self.refiner is not None:
            if not isinstance(self.refiner, RefinerChoice):
                raise RequestError("refiner must be a checkpoint and a switch point", "refiner_checkpoint")
            self.refiner.validate()
        if self.script is not None:
            if not isinstance(self.script, ScriptChoice):
                raise RequestError("script must be a script's name, with its options as an object", "script_name")
            self.script.validate()
        return self

    def _validate_sampler_parameters(self) -> None:
        for name, (low, high) in SAMPLER_PARAMETER_RANGES.items():
            if getattr(self, name) is not None:
                _check_number(getattr(self, name), name, low, high)
        if self.eta_noise_seed_delta is not None:
            _check_int(self.eta_noise_seed_delta, "eta_noise_seed_delta", 0, MAX_SEED)
        Flag().check(self.disable_extra_networks, "disable_extra_networks")

    def _validate_controlnet(self) -> None:
        from engine.controlnet.units import ControlUnit

        if not isinstance(self.controlnet_units, tuple) or \
                not all(isinstance(unit, ControlUnit) for unit in self.controlnet_units):
            raise RequestError("controlnet_units must be a list of ControlNet units", "controlnet_units")
        for index, unit in enumerate(self.controlnet_units):
            unit.validate(index)
            if unit.enabled and unit.image is None and not (self.img2img and self.img2img.init_images):
                raise RequestError(f"ControlNet unit {index} is enabled but has no control image "
                                   "(upload one, or draw a scribble)", "image")

    @property
    def active_controlnet_units(self) -> list:
        """(index, unit) of the units that act."""
        return [(index, unit) for index, unit in enumerate(self.controlnet_units) if unit.enabled]

    @property
    def img2img_steps(self) -> int:
        """How many sampling steps this job runs: all `steps` for txt2img, for img2img as its part
        counts them (Img2ImgOptions.sampling_steps)."""
        return self.img2img.sampling_steps(self.steps) if self.img2img is not None else self.steps

    @property
    def schedule_steps(self) -> int:
        """The steps of the schedule this job runs (the end of, for img2img)."""
        return self.img2img.schedule_steps(self.steps) if self.img2img is not None else self.steps

    def _validate_img2img(self) -> None:
        if self.mode != "img2img":
            if self.img2img is not None:
                raise RequestError(f"img2img options (init images, denoising strength...) do not apply to "
                                   f"a {self.mode} request", "img2img")
            return
        if self.img2img is None:
            raise RequestError("img2img needs an init image: this img2img request has no img2img "
                               "options (init images, denoising strength...)", "img2img")
        if not isinstance(self.img2img, Img2ImgOptions):
            raise RequestError("img2img must be the img2img options (Img2ImgOptions)", "img2img")
        self.img2img.validate()

    @property
    def seed_resize(self) -> tuple[int, int] | None:
        """(width, height) the noise is drawn at before being fitted to the image, if asked for."""
        w, h = self.seed_resize_from_w, self.seed_resize_from_h
        if w > 0 and h > 0 and (w, h) != (self.width, self.height):
            return w, h
        return None


def _check_text(value: Any, name: str) -> None:
    Text(MAX_PROMPT_CHARS).check(value, name)


def _check_int(value: Any, name: str, low: int, high: int) -> None:
    Whole(low, high).check(value, name)


def _check_number(value: Any, name: str, low: float, high: float) -> None:
    Number(low, high).check(value, name)


def _check_size(value: Any, name: str) -> None:
    Whole(MIN_SIZE, MAX_SIZE, SIZE_STEP).check(value, name)


def checked_mask(request: GenerationRequest, empty_means_img2img: bool) -> GenerationRequest:
    """An empty mask would change nothing: say so, or run plain img2img if the user chose so."""
    part = request.img2img
    if part.mask is None:
        return request
    mask = image_prep.binary_mask(part.mask, part.init_images[0].size)
    if part.inpainting_mask_invert or not image_prep.is_empty(mask):
        return request
    if empty_means_img2img:
        return request.with_img2img(mask=None)
    raise RequestError("The mask is empty: paint over the part of the picture to change "
                       "(white in an uploaded mask), or use plain img2img. (Setting "
                       "'img2img_empty_mask_as_img2img' runs plain img2img instead.)", "mask")

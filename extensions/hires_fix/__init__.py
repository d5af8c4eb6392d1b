"""Hires. fix: make the picture at the first-pass size, upscale it, then run a second img2img
pass at the bigger size with the same seed, so large pictures keep a sound composition."""

from __future__ import annotations

from PIL import Image

from engine.sampling import samplers
from engine.extensions import Extension, Field
from engine.image_prep import CROP_AND_RESIZE, JUST_RESIZE, LATENT_UPSCALE, resize_image
from engine.request import LATENT_UPSCALE_MODES, MAX_SIZE, MAX_STEPS, SIZE_STEP

PIXEL_UPSCALERS = {"None": Image.Resampling.LANCZOS, "Lanczos": Image.Resampling.LANCZOS,
                   "Nearest": Image.Resampling.NEAREST}
UPSCALERS = tuple(LATENT_UPSCALE_MODES) + tuple(PIXEL_UPSCALERS)
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"
SAME_CHECKPOINT = "Use same checkpoint"


def target_size(width: int, height: int, options) -> tuple[int, int]:
    """The second pass's size: resize-to when given (one side alone keeps the aspect ratio),
    else the first pass's size times the scale, on the size grid."""
    resize_x, resize_y = int(options["resize_x"]), int(options["resize_y"])
    if resize_x and resize_y:
        return resize_x, resize_y
    if resize_x:
        return resize_x, _snap(height * resize_x / width)
    if resize_y:
        return _snap(width * resize_y / height), resize_y
    return _snap(width * options["scale"]), _snap(height * options["scale"])


def _snap(value: float) -> int:
    return int(min(MAX_SIZE, max(SIZE_STEP, round(value / SIZE_STEP) * SIZE_STEP)))


class HiresFix(Extension):
    name = "hires_fix"
    title = "Hires. fix"
    order = 20
    modes = ("txt2img",)
    # Its second pass is A1111's hires pass: the refiner acts in the passes the
    # hires_fix_refiner_pass setting names.
    hires_pass = True
    catalog = None  # the names of what is installed, given at start (attach)

    def fields_with(self, model_upscalers: tuple[str, ...]) -> tuple[Field, ...]:
        return (
            Field("enabled", "Hires. fix", False),
            Field("upscaler", "Upscaler", "Latent", kind="dropdown", choices=UPSCALERS + model_upscalers),
            Field("steps", "Hires steps (0: as many as the first pass)", 0, kind="slider", minimum=0,
                  maximum=MAX_STEPS, step=1),
            Field("denoising_strength", "Denoising strength", 0.7, kind="slider", minimum=0, maximum=1,
                  step=0.01),
            Field("scale", "Upscale by", 2.0, kind="slider", minimum=1, maximum=4, step=0.05),
            Field("resize_x", "Resize width to", 0, kind="slider", minimum=0, maximum=MAX_SIZE, step=SIZE_STEP),
            Field("resize_y", "Resize height to", 0, kind="slider", minimum=0, maximum=MAX_SIZE, step=SIZE_STEP),
            Field("sampler", "Hires sampling method", SAME_SAMPLER, kind="dropdown",
                  choices=(SAME_SAMPLER, *samplers.sampler_names())),
            Field("scheduler", "Hires schedule type", SAME_SCHEDULER, kind="dropdown",
                  choices=(SAME_SCHEDULER, *samplers.SCHEDULE_TYPES)),
            # A checkpoint's name for the second pass (the API's hr_checkpoint_name).
            Field("checkpoint", "Hires checkpoint", SAME_CHECKPOINT, kind="text", in_ui=False),
            Field("prompt", "Hires prompt (empty: the same prompt)", "", kind="text"),
            Field("negative_prompt", "Hires negative prompt (empty: the same)", "", kind="text"),
        )

    def __init__(self):
        self.fields = self.fields_with(())

    def attach(self, catalog):
        # Model upscalers found in models/ESRGAN (and similar) join the list.
        self.catalog = catalog
        self.fields = self.fields_with(tuple(name for name in catalog.upscaler_names()
                                             if name not in PIXEL_UPSCALERS))
    description = "Upscales the first pass and refines it with a second img2img pass."

    def check(self, options):
        # A standard model upscaler not downloaded yet: say so (and offer it) before queueing.
        upscaler = options.get("upscaler", "Latent")
        if self.is_active(options) and upscaler not in UPSCALERS and self.catalog is not None:
            self.catalog.check_upscaler(upscaler, "hr_upscaler")

    def summary(self, options, width: int, height: int) -> str:
        new_width, new_height = target_size(width, height, options)
        return f"from {width}x{height} to **{new_width}x{new_height}**"

    def process(self, image, request, options, ctx):
        with ctx.memory_stage("hires_fix"):  # running out of memory here: say so, with hires advice
            return self._process(image, request, options, ctx)

    def _process(self, image, request, options, ctx):
        width, height = target_size(request.width, request.height, options)
        upscaler = options["upscaler"]
        ctx.save_before("highres-fix", image)
        if options["resize_x"] and options["resize_y"]:
            # Resize-to with another shape: crop the first pass to the target's shape first.
            image = resize_image(image, CROP_AND_RESIZE, *_fit(image.size, width, height))
        if options["denoising_strength"] == 0:
            # Upscale only, as the mature UI does at 0: no sampling, the picture through the VAE.
            if upscaler in LATENT_UPSCALE_MODES:
                return ctx.vae_roundtrip(image, width, height, upscaler)
            return ctx.vae_roundtrip(self._pixel_upscale(image, upscaler, width, height, ctx), width, height)
        if upscaler in LATENT_UPSCALE_MODES:
            init, resize_mode = image, LATENT_UPSCALE
        else:
            init, resize_mode = self._pixel_upscale(image, upscaler, width, height, ctx), JUST_RESIZE
        sampler = options["sampler"] if options["sampler"] != SAME_SAMPLER else request.sampler_name
        scheduler = options["scheduler"] if options["scheduler"] != SAME_SCHEDULER else \
            request.scheduler if sampler == request.sampler_name else "Automatic"
        second = request.with_img2img(
            init_images=(init,), resize_mode=resize_mode,
            latent_upscale_mode=upscaler if upscaler in LATENT_UPSCALE_MODES else "Latent",
            denoising_strength=options["denoising_strength"],
        ).replace(
            width=width, height=height, steps=int(options["steps"]) or request.steps,
            sampler_name=sampler, scheduler=scheduler,
            prompt=options["prompt"], negative_prompt=options["negative_prompt"])
        checkpoint = options["checkpoint"] if options["checkpoint"] != SAME_CHECKPOINT else None
        # The same frame, larger; its steps run in full, as the ecosystem's hires pass does.
        return ctx.second_pass(second, keep_control=True, checkpoint=checkpoint, exact_steps=True, hires=True)

    def _pixel_upscale(self, image, upscaler, width, height, ctx):
        if upscaler not in PIXEL_UPSCALERS:  # a model upscaler
            return ctx.upscale(image, upscaler, width, height)
        return image.resize((width, height), PIXEL_UPSCALERS[upscaler])

    def infotext(self, request, options):
        params = {"Denoising strength": options["denoising_strength"]}
        if options["resize_x"] or options["resize_y"]:
            params["Hires resize"] = "{}x{}".format(*target_size(request.width, request.height, options))
        else:
            params["Hires upscale"] = options["scale"]
        if options["steps"]:
            params["Hires steps"] = int(options["steps"])
        params["Hires upscaler"] = options["upscaler"]
        if options["sampler"] != SAME_SAMPLER:
            params["Hires sampler"] = options["sampler"]
        if options["scheduler"] != SAME_SCHEDULER:
            params["Hires schedule type"] = options["scheduler"]
        if options["checkpoint"] != SAME_CHECKPOINT:
            params["Hires checkpoint"] = options["checkpoint"]
        if options["prompt"]:
            params["Hires prompt"] = options["prompt"]
        if options["negative_prompt"]:
            params["Hires negative prompt"] = options["negative_prompt"]
        return params


def _fit(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The largest size of the target's shape that fits in `size` (the crop before upscaling)."""
    scale = min(size[0] / width, size[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


extension = HiresFix()

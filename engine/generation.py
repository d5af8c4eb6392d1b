"""Running one generation job: prompts, add-on networks, the batch loop, progress, previews,
decoding, infotext and saving."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from . import extensions, infotext, memory_guard, samplers
from .addons import AddOns
from .conditioning import PromptEncoder, ScheduledConditioning
from .controlnet import apply as control
from .devices import latent_dtype
from .errors import RequestError
from .filenames import ImageFields
from .job_results import GenerationResult, OutputPolicy, hash_list, image_params
from .jobs import Job
from .lora import AppliedLoras, applied_loras
from .memory_modes import applied as memory_modes_applied
from .negative_guidance import skipping_negative
from .outputs import OutputWriter, make_grid
from .pipelines import LoadedModel
from .preview import preview_image
from .prompt_parser import extract_extra_networks
from .request import LATENT_UPSCALE_MODES, GenerationRequest
from .seeds import JobSeeds, initial_latents, job_seeds, noise_device, step_generators
from .vae import decode_fitting, encode


@dataclass(frozen=True)
class ImageContext:
    """What an extension's process hook knows about the image it gets."""

    run: "Txt2ImgRun"
    seed: int
    subseed: int

    def second_pass(self, request: GenerationRequest, keep_control: bool = False,
                    checkpoint: str | None = None, exact_steps: bool = False) -> Image.Image:
        """Run `request` (an img2img request) as part of this job, with this image's seeds and
        the job's prompts unless the request brings its own; return its image. `keep_control`:
        the job's ControlNet units act in it (only for a pass over the same frame).
        `checkpoint`: another checkpoint runs it (the job's model is back afterwards).
        `exact_steps`: it runs request.steps steps (of a longer schedule), not steps x strength."""
        return self.run.second_pass(request, self.seed, self.subseed, keep_control, checkpoint, exact_steps)

    def vae_roundtrip(self, image: Image.Image, width: int, height: int,
                      latent_mode: str | None = None) -> Image.Image:
        """The picture encoded and decoded by the job's VAE, its latents scaled to width x height
        with `latent_mode` (a latent upscaler's name) when given: what a second pass at denoising
        strength 0 gives."""
        return self.run.vae_roundtrip(image, width, height, latent_mode)

    def save_before(self, stage: str, image: Image.Image) -> None:
        """Keep a copy of the image as it is before `stage` when the settings ask for one."""
        self.run.save_before(stage, image, self.seed, self.subseed)


class Txt2ImgRun:
    """One txt2img job on one loaded model."""

    def __init__(self, job: Job, request: GenerationRequest, model: LoadedModel,
                 policy: OutputPolicy, addons: AddOns):
        self.job = job
        self.request = request
        self.model = model
        self.policy = policy
        self.addons = addons
        self.sampler, self.schedule = samplers.resolve(request.sampler_name, request.scheduler)
        self.seeds: JobSeeds = job_seeds(request)
        self.pipe = model.pipeline_for(self.task)
        self._batch_steps = self.sampling_steps
        self._blank_conditioning = None
        self.active = addons.extensions.active(request.mode, request.extensions)
        # What a second pass prompts with; run() sets them after styles and LoRA tags (styled:
        # with the tags still in, for a pass by another checkpoint).
        self.final_prompt, self.final_negative = request.prompt, request.negative_prompt
        self.styled_prompt, self.styled_negative = request.prompt, request.negative_prompt
        # Engine: a context manager making another checkpoint current for a while (hires fix).
        self.borrow_model = None
        self._control_step = 0  # sampling steps done in this pass, for the ControlNet windows
        self._control_pass: "Txt2ImgRun | None" = self  # whose steps the ControlNet windows follow
        self.memory_notes: list[str] = []  # what was done to fit in memory (shared with inner passes)
        self.negative_skips = 0  # UNet calls that left out the negative prompt (s_min_uncond)
        self._writing: tuple[OutputWriter, GenerationResult] | None = None  # for save_before

    @property
    def task(self) -> str:
        # A dedicated inpainting model makes pictures from nothing as an inpaint of an empty canvas.
        return "inpaint" if self.model.is_inpainting else "txt2img"

    @property
    def sampling_steps(self) -> int:
        """The steps that actually run (and that prompt editing counts in)."""
        return self.request.steps

    def run(self, writer: OutputWriter) -> GenerationResult:
        request, job = self.request, self.job
        job.set_total(self.sampling_steps * request.n_iter, request.n_iter)
        vae_file = self.model.use_vae(request.vae, self.addons.vaes)
        with memory_guard.stage("model_placement"):  # a no-op unless the mode (or the VAE) changed
            self.model.use_memory_mode(self.policy.memory.memory_mode)
        prompt, negative = self.addons.styles.apply(request.prompt, request.negative_prompt,
                                                    request.styles)
        text, networks = extract_extra_networks(prompt)
        negative_text, _ = extract_extra_networks(negative)
        if request.disable_extra_networks:  # the tags are still taken out of the text
            networks = []
        # What a second pass (hires fix) prompts with: styles applied, networks already loaded.
        self.final_prompt, self.final_negative = text, negative_text
        self.styled_prompt, self.styled_negative = prompt, negative
        result = GenerationResult(
            request.replace(seed=self.seeds.seeds[0], subseed=self.seeds.subseeds[0]),
            self.model.info, [], [], [], [], prompt=prompt, negative_prompt=negative,
            job_timestamp=dt.datetime.now().strftime("%Y%m%d%H%M%S"),
            inpainting_model=self.model.is_inpainting, pnginfo=self.policy.run.enable_pnginfo)
        registry = self.addons.extensions
        with memory_modes_applied(self.pipe, self.policy.memory), \
                extensions.patched(registry, self.active, self.pipe, request), \
                applied_loras(self.pipe, networks, self.addons.loras) as loras, \
                self._controlnets():
            encoder = PromptEncoder(self.pipe, self.model.family, clip_skip=request.clip_skip,
                                    emphasis=request.emphasis,
                                    **self.addons.embeddings.encoder_options(self.model))
            with memory_guard.stage("text_encoding"):
                cond, uncond = encoder.encode_schedules(text, negative_text, self.sampling_steps)
            result.extra_params = self._extra_params(loras, encoder, vae_file)
            result.warnings = list(loras.warnings)
            styles_note = self.addons.styles.unknown_note(request.styles)
            if styles_note:
                result.warnings.append(styles_note)
            result.warnings += self._sampler_notes()[1]
            for batch in range(request.n_iter):
                if job.interrupted:
                    break
                self._run_batch(batch, cond, uncond, result, writer)
        result.warnings += self.memory_notes
        result.interrupted = job.interrupted
        if self.policy.make_grid and len(result.images) >= 2:
            result.grid = make_grid(result.images)
            result.grid.info[infotext.INFOTEXT_KEY] = result.infotexts[0]
            if self.policy.save_grid:
                result.grid_path = writer.save_grid(result.images, request.mode, result.infotexts[0],
                                                    self._name_fields(result, 0))
        return result

    def _extra_params(self, loras: AppliedLoras, encoder: PromptEncoder, vae_file) -> dict[str, Any]:
        request = self.request
        extra: dict[str, Any] = {}
        if vae_file is not None:
            extra["VAE hash"] = self.addons.vaes.short_hash(vae_file)
            extra["VAE"] = vae_file.name
        if request.clip_skip > 1 and not self.model.is_sdxl:
            extra["Clip skip"] = request.clip_skip
        if request.emphasis not in ("", "Original"):
            extra["Emphasis"] = request.emphasis
        if request.randn_source not in ("", "CPU"):
            extra["RNG"] = request.randn_source
        extra.update(self._sampler_notes()[0])
        if request.eta_noise_seed_delta and self.sampler.uses_ensd and self.eta != 0:
            extra["ENSD"] = request.eta_noise_seed_delta
        extra.update(self._task_params())
        for index, unit in self.request.active_controlnet_units:
            extra[f"ControlNet {index}"] = unit.infotext_value()
        extra.update(extensions.infotext(self.addons.extensions, self.active, request))
        extra["Lora hashes"] = hash_list(loras.hashes)
        extra["TI hashes"] = hash_list(self.addons.embeddings.hashes(encoder.used_embeddings))
        return {key: value for key, value in extra.items() if value is not None}

    def _task_params(self) -> dict[str, Any]:
        """Infotext keys only this kind of job has."""
        return {}

    def _control_fallback(self) -> tuple[Image.Image | None, Image.Image | None]:
        """The picture (and mask) a ControlNet unit without its own image uses: none here."""
        return None, None

    def _frame_control(self, image: Image.Image | None) -> Image.Image | None:
        """A unit's own picture (or mask) framed like the region this job generates."""
        return image

    def _controlnets(self):
        """The request's ControlNet units attached to the UNet for this job (or nothing)."""
        units = self.request.active_controlnet_units
        if not units:
            return contextlib.nullcontext()
        request, unet, library = self.request, self.pipe.unet, self.addons.controlnets
        for index, unit in units:  # the checkpoint may have changed since the request was checked
            if library.family(unit.model) != self.model.family:
                raise RequestError(f"ControlNet unit {index}: '{unit.model}' does not fit the loaded "
                                   f"checkpoint ({self.model.info.model_name}); pick one of its family", "model")
        units = [(index, unit.replace(image=self._frame_control(unit.image), mask=self._frame_control(unit.mask)))
                 for index, unit in units]
        image, mask = self._control_fallback()
        placement = self.model.placement
        prepared = control.prepare(units, library, request.width, request.height,
                                   placement.resting_device, unet.dtype, image, mask, library.folder)
        # An LCM-style UNet (guidance embedded) has no negative half in its batch.
        cfg = request.cfg_scale > 1 and getattr(unet.config, "time_cond_proj_dim", None) is None
        return _both(placement.controlnets(item.net for item in prepared),
                     control.attached(unet, prepared, cfg=cfg, progress=self._control_progress,
                                      vae_scale=self.model.vae_scale_factor))

    def _control_progress(self) -> tuple[int, int] | None:
        """(step, steps) of the pass now sampling, or None while control is off (an inner pass
        over another frame, like the face detailer's crops)."""
        run = self._control_pass
        if run is None:
            return None
        return run._control_step, max(1, getattr(run.pipe, "_num_timesteps", 0) or run.sampling_steps)

    def second_pass(self, request: GenerationRequest, seed: int, subseed: int, keep_control: bool = False,
                    checkpoint: str | None = None, exact_steps: bool = False) -> Image.Image:
        """An img2img pass inside this job (on the lane already, so it is not queued): the
        prompts are the job's (after styles, with its LoRAs still loaded) unless given.
        `keep_control`: the job's ControlNet units act in it too (a pass over the same frame,
        like hires fix); otherwise they are off for it. `checkpoint`: run by that checkpoint,
        which takes the job's LoRAs from the prompt's tags (ControlNet stays with the job's)."""
        from .img2img import Img2ImgRun  # img2img builds on this module

        if checkpoint and self.borrow_model is None:
            raise RequestError("A second pass with another checkpoint is not possible here", "checkpoint")
        borrowing = self.borrow_model(checkpoint) if checkpoint else contextlib.nullcontext(self.model)
        with borrowing as model:
            own = model is self.model
            plain = (lambda text: extract_extra_networks(text)[0]) if own else (lambda text: text)
            request = request.replace(
                mode="img2img", seed=seed, subseed=subseed, batch_size=1, n_iter=1, styles=(),
                prompt=plain(request.prompt) if request.prompt else
                self.final_prompt if own else self.styled_prompt,
                negative_prompt=plain(request.negative_prompt) if request.negative_prompt else
                self.final_negative if own else self.styled_negative,
                extensions={}, controlnet_units=(), save_images=False, save_grid=False,
                exact_steps=exact_steps or request.exact_steps).validate()
            inner = Img2ImgRun(self.job, request, model, self.policy.inner_pass(), self.addons)
            inner.memory_notes = self.memory_notes
            outer, self._control_pass = self._control_pass, (inner if keep_control and own else None)
            try:
                return inner.run(None).images[0]
            finally:
                self._control_pass = outer

    def vae_roundtrip(self, image: Image.Image, width: int, height: int,
                      latent_mode: str | None = None) -> Image.Image:
        from .img2img import image_tensor

        scale = self.model.vae_scale_factor
        with torch.inference_mode():
            latents = encode(self.pipe.vae, image_tensor(image))
            if latent_mode is not None:
                mode, antialias = LATENT_UPSCALE_MODES[latent_mode]
                latents = torch.nn.functional.interpolate(latents.float(), size=(height // scale, width // scale),
                                                          mode=mode, antialias=antialias)
            images = decode_fitting(self.pipe.vae, latents, self.memory_notes)
            return self.pipe.image_processor.postprocess(images, output_type="pil")[0]

    def _run_batch(self, batch: int, cond: ScheduledConditioning, uncond: ScheduledConditioning,
                   result: GenerationResult, writer: OutputWriter) -> None:
        request, job = self.request, self.job
        job.skipped = False
        job.batch_index = batch
        self._control_step = 0
        seeds, subseeds = self.seeds.batch(batch, request.batch_size)
        self._writing = (writer, result)
        images = self._finish(self._sample(seeds, subseeds, cond, uncond, batch), batch)
        if self.negative_skips:  # written once it has happened, as the ecosystem does
            result.extra_params["NGMS"] = request.s_min_uncond
        images = [extensions.process(self.addons.extensions, self.active, image, request,
                                     ImageContext(self, seed, subseed))
                  for image, seed, subseed in zip(images, seeds, subseeds)]
        for image, seed, subseed in zip(images, seeds, subseeds):
            text = self._infotext(result, seed, subseed)
            if result.pnginfo:
                image.info[infotext.INFOTEXT_KEY] = text
            result.images.append(image)
            result.seeds.append(seed)
            result.subseeds.append(subseed)
            result.infotexts.append(text)
            saved = writer.save_image(image, request.mode, seed, text, self._name_fields(result, -1)) \
                if self.policy.save_images else None
            result.paths.append(saved)

    def _infotext(self, result: GenerationResult, seed: int, subseed: int) -> str:
        return infotext.build(result.prompt, result.negative_prompt,
                              image_params(self.request, self.model, seed, subseed, result.extra_params))

    def save_before(self, stage: str, image: Image.Image, seed: int, subseed: int) -> None:
        """Save a copy of an image as it is before `stage` ("face-restoration", "highres-fix",
        "color-correction") when the save_images_before_* setting asks for it."""
        if stage not in self.policy.run.save_before or not self.policy.save_images or self._writing is None:
            return
        writer, result = self._writing
        fields = ImageFields.of(self.request, self.model.info, seed, image, result.prompt,
                                result.negative_prompt, result.job_timestamp)
        writer.save_image(image, self.request.mode, seed, self._infotext(result, seed, subseed), fields,
                          suffix=f"-before-{stage}")

    def _name_fields(self, result: GenerationResult, index: int) -> ImageFields:
        """What a saved file's name may tell about image `index` of the result."""
        return ImageFields.of(self.request, self.model.info, result.seeds[index], result.images[index],
                              result.prompt, result.negative_prompt, result.job_timestamp)

    def _sample(self, seeds, subseeds, cond: ScheduledConditioning, uncond: ScheduledConditioning,
                batch: int) -> list[Image.Image]:
        request, pipe = self.request, self.pipe
        device, dtype = self.model.device, latent_dtype(pipe.unet)
        count = len(seeds)
        draw_on = noise_device(request.randn_source, device)
        noise = initial_latents(request, seeds, subseeds, self.model.vae_scale_factor, draw_on)
        eta = self.eta
        pipe.scheduler = samplers.build_scheduler(self.sampler, self.schedule, self.model.scheduler_config,
                                                  seeds[0], samplers.SamplerParams.of(
                                                      request.replace(eta=eta), self.policy.run.always_discard))
        first_cond, first_uncond = cond.at(1), uncond.at(1)
        switching = not (cond.is_constant and uncond.is_constant)
        tensor_inputs = ["latents"] + (["prompt_embeds"] if switching else [])
        kwargs = dict(
            prompt_embeds=first_cond.embeds.expand(count, -1, -1),
            negative_prompt_embeds=first_uncond.embeds.expand(count, -1, -1),
            num_inference_steps=self._schedule_steps(), guidance_scale=request.cfg_scale, eta=eta,
            generator=step_generators(seeds, draw_on, tuple(noise.shape[1:]), request.eta_noise_seed_delta or 0),
            callback_on_step_end=self._callback(batch, cond, uncond, count),
            output_type="latent",
        )
        with torch.inference_mode():
            kwargs.update(self._task_inputs(noise.to(device, dtype), batch))
        if self.model.is_sdxl:
            kwargs["pooled_prompt_embeds"] = first_cond.pooled.expand(count, -1)
            kwargs["negative_pooled_prompt_embeds"] = first_uncond.pooled.expand(count, -1)
            if switching:
                tensor_inputs.append("add_text_embeds")
        kwargs["callback_on_step_end_tensor_inputs"] = tensor_inputs
        alphas = getattr(pipe.scheduler, "alphas_cumprod", None)
        negative_skip = skipping_negative(
            pipe.unet, (request.s_min_uncond or 0.0) if alphas is not None else 0.0, alphas,
            guiding=lambda: pipe.do_classifier_free_guidance, on_skip=self._negative_skipped)
        with torch.inference_mode():
            with memory_guard.stage("denoise"), negative_skip:
                latents = pipe(**kwargs).images
            images = decode_fitting(pipe.vae, latents, self.memory_notes)
            return list(pipe.image_processor.postprocess(images, output_type="pil"))

    def _sampler_notes(self) -> tuple[dict[str, Any], list[str]]:
        """The sampler parameters' infotext keys, and warnings for those this sampler cannot use."""
        return samplers.parameter_notes(self.sampler, self.request.replace(eta=self.eta),
                                        self.policy.run.always_discard)

    @property
    def eta(self) -> float:
        return samplers.eta_for(self.sampler, self.request.eta, self.policy.run.eta_defaults)

    def _schedule_steps(self) -> int:
        """The steps the sampler's schedule is made for (img2img may run only the last part)."""
        return self.request.steps

    def _negative_skipped(self) -> None:
        self.negative_skips += 1

    def _task_inputs(self, noise: torch.Tensor, batch: int) -> dict[str, Any]:
        """The pipeline arguments that say what to start from (here: pure noise)."""
        request = self.request
        inputs: dict[str, Any] = {"latents": noise, "width": request.width, "height": request.height}
        if self.model.is_inpainting:
            inputs.update(self._blank_canvas_inputs(noise))
        return inputs

    def _blank_canvas_inputs(self, noise: torch.Tensor) -> dict[str, Any]:
        """An inpainting model's txt2img: everything masked, nothing of a (grey) image kept."""
        count, _, height, width = noise.shape
        if self._blank_conditioning is None:
            scale = self.model.vae_scale_factor
            grey = torch.zeros(1, 3, height * scale, width * scale)
            self._blank_conditioning = encode(self.pipe.vae, grey)
        masked = self._blank_conditioning.to(noise.device, noise.dtype).expand(count, -1, -1, -1)
        return {"image": torch.zeros_like(noise), "strength": 1.0, "masked_image_latents": masked,
                "mask_image": Image.new("L", (self.request.width, self.request.height), 255)}

    def _finish(self, images: list[Image.Image], batch: int) -> list[Image.Image]:
        """Work on the decoded images before they are saved (img2img pastes them back)."""
        return images

    def _callback(self, batch: int, cond: ScheduledConditioning, uncond: ScheduledConditioning,
                  count: int):
        job, every, family = self.job, self.policy.preview_every, self.model.family
        preview_method = self.policy.preview_method
        n_iter, steps, is_sdxl = self.request.n_iter, self.sampling_steps, self.model.is_sdxl
        switching = not (cond.is_constant and uncond.is_constant)

        def on_step_end(pipe, index: int, timestep, tensors: dict) -> dict:
            self._control_step = index + 1
            if index == 0:
                # Second-order samplers call the model more often than `steps`: use the real count.
                self._batch_steps = max(1, pipe.num_timesteps)
                job.set_total(self._batch_steps * n_iter)
                job.step = batch * self._batch_steps
            job.advance()
            if every and (index + 1) % every == 0 and "latents" in tensors:
                job.set_preview(preview_image(preview_method, pipe, tensors["latents"], family))
            if switching:
                # Prompt editing: the sampling step that runs next, counted in the user's steps.
                this_step = index * steps // self._batch_steps + 1
                next_step = (index + 1) * steps // self._batch_steps + 1
                if cond.at(next_step) is not cond.at(this_step) or \
                        uncond.at(next_step) is not uncond.at(this_step):
                    _switch_conditioning(pipe, tensors, cond.at(next_step), uncond.at(next_step),
                                         count, is_sdxl)
            if job.should_stop_sampling:
                pipe._interrupt = True
            return tensors

        return on_step_end


@contextlib.contextmanager
def _both(first, second):
    """Two contexts as one: `second` inside `first`, undone in reverse."""
    with first, second:
        yield


def _switch_conditioning(pipe, tensors: dict, cond, uncond, count: int, is_sdxl: bool) -> None:
    """Replace the embeddings the pipeline uses from the next step on (negative first, with CFG)."""
    embeds = cond.embeds.expand(count, -1, -1)
    if pipe.do_classifier_free_guidance:
        embeds = torch.cat([uncond.embeds.expand(count, -1, -1), embeds])
    tensors["prompt_embeds"] = embeds.to(tensors["prompt_embeds"].dtype)
    if is_sdxl:
        pooled = cond.pooled.expand(count, -1)
        if pipe.do_classifier_free_guidance:
            pooled = torch.cat([uncond.pooled.expand(count, -1), pooled])
        tensors["add_text_embeds"] = pooled.to(tensors["add_text_embeds"].dtype)

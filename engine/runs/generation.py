"""Running one generation job: prompts, add-on networks, the batch loop, progress, previews,
decoding, infotext and saving.

One run class for every job; what differs between txt2img and img2img/inpainting is where
sampling starts, a strategy the run is given: NoiseStart (start_noise.py) or ImageStart
(img2img.py). Passes inside a job (hires fix, the face detailer) are runs of their own with an
ImageStart, made by `second_pass`."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import torch
from PIL import Image

from engine.extensions import registry as extensions

from engine.output import infotext

from engine.memory import memory_guard

from engine.sampling import samplers
from engine.addons import AddOns
from engine.prompts.conditioning import ScheduledConditioning
from engine.prompts.encoders import prompt_encoder
from engine.controlnet import apply as control
from engine.controlnet import ip_adapter, reference
from engine.errors import RequestError
from engine.output.filenames import ImageFields
from engine.job_results import GenerationResult, OutputPolicy, image_params
from engine.jobs import Job
from engine.families import family_of
from engine.networks.lora import applied_loras
from engine.memory.memory_modes import applied as memory_modes_applied
from engine.output.writer import OutputWriter, make_grid
from engine.models.pipelines import LoadedModel
from engine.runs.preview import Previewer
from engine.runs import prediction_setup, run_infotext
from engine.prompts.prompt_parser import extract_extra_networks
from engine.request import LATENT_UPSCALE_MODES, GenerationRequest
from engine.sampling.denoiser import (
    CFGDenoiser,
    Conditioning,
    Interrupted,
    guidance_embedding,
)
from engine.sampling.noise import ImageNoise
from engine.sampling.runner import BatchSampling, SamplingPlan
from engine.runs.seeds import DEFAULT_RANDN_SOURCE, JobSeeds, job_seeds, latent_shape
from engine.networks.vae import decode_fitting, encode
from engine.runs.img2img import ImageStart, image_tensor
from engine.runs.start_noise import NoiseStart
from engine.runs.refiner import RefinerJobState, RefinerPass, RefinerSwitch
from engine.runs.image_context import ImageContext
from engine.runs.detected_maps import DetectedMaps


class GenerationRun:
    """One generation job on one loaded model: txt2img, or img2img/inpainting when the request
    has init images (the start strategy differs, nothing else)."""

    def __init__(self, job: Job, request: GenerationRequest, model: LoadedModel,
                 policy: OutputPolicy, addons: AddOns):
        self.job = job
        self.request = request
        self.model = model
        self.policy = policy
        self.addons = addons
        self.memory_notes: list[str] = []  # what was done to fit in memory (shared with inner passes)
        self.sampler, self.schedule = samplers.resolve(request.sampler_name, request.scheduler)
        # What is particular to the model's family: its prompts, its denoising network, its noise.
        self.family = family_of(model.family)
        self.family.check_request(request, self.sampler, model.info.model_name)
        if self.family.schedule_for(self.schedule) != self.schedule:
            # Automatic is the family's own schedule (Simple for a flow model, whatever the
            # sampler's own is): the request names it, so that the infotext says what ran.
            self.schedule = self.family.schedule_for(self.schedule)
            request = self.request = request.replace(scheduler=self.schedule)
        # Before anything is encoded or sampled: an EDM model's VAE takes its latent format.
        self.prediction = prediction_setup.use_for_job(model, request, policy.run, self.sampler)
        self.seeds: JobSeeds = job_seeds(request)
        vae = lambda: self.pipe.vae  # noqa: E731  (the pipeline is made for the start's task)
        self.start = ImageStart(request, model, policy, addons, vae, self.memory_notes) \
            if request.mode == "img2img" else NoiseStart(request, model, addons, vae)
        self.pipe = model.pipeline_for(self.start.task)
        self._conditioning_state = {"step": 1}  # which prompt-editing step samples now
        self.active = addons.extensions.active(request.mode, request.extensions)
        # What a second pass prompts with; run() sets them after styles and LoRA tags (styled:
        # with the tags still in, for a pass by another checkpoint).
        self.final_prompt, self.final_negative = request.prompt, request.negative_prompt
        self.styled_prompt, self.styled_negative = request.prompt, request.negative_prompt
        # Engine: a context manager making another checkpoint current for a while (hires fix).
        self.borrow_model = None
        self._control_step = 0  # sampling steps done in this pass, for the ControlNet windows
        self._control_pass: GenerationRun | None = self  # whose steps the ControlNet windows follow
        self.detected_maps = DetectedMaps()
        self.control_notes: list[str] = []   # what the units' preprocessors tell the job
        self.negative_skips = 0  # UNet calls that left out the negative prompt (s_min_uncond)
        self._writing: tuple[OutputWriter, GenerationResult] | None = None  # for save_before
        self._previewer: Previewer | None = None  # set by run(): how live previews are made
        self.networks: list = []  # the prompt's extra networks (LoRAs), for a refiner to take too
        # The refiner: what the job's passes share, and whether this pass is a hires pass.
        self.refiner_state = RefinerJobState()
        self.hires_pass = False

    @property
    def sampling_steps(self) -> int:
        """The steps that actually run (and that prompt editing counts in)."""
        return self.start.sampling_steps()

    def run(self, writer: OutputWriter) -> GenerationResult:
        request, job = self.request, self.job
        job.set_total(self.sampling_steps * request.n_iter, request.n_iter)
        vae_file = self.model.use_vae(request.vae, self.addons.vaes)
        with memory_guard.stage("model_placement", faults=self.addons.faults):  # a no-op unless the mode (or the VAE) changed
            self.model.use_memory_mode(self.policy.memory.memory_mode)
        prompt, negative = self.addons.styles.apply(request.prompt, request.negative_prompt,
                                                    request.styles)
        text, networks = extract_extra_networks(prompt)
        negative_text, _ = extract_extra_networks(negative)
        if request.disable_extra_networks:  # the tags are still taken out of the text
            networks = []
        self.networks = networks
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
                self._loras(networks) as loras, \
                self._controlnets():
            embeddings = {} if self.family.flow else self.addons.embeddings.encoder_options(self.model)
            encoder = prompt_encoder(self.family, self.pipe, request, embeddings)
            with memory_guard.stage("text_encoding", faults=self.addons.faults):
                # A flow model at CFG 1 never runs its negative half: the prompt stands in for it, so
                # the encoders' cache answers instead of a second T5 pass.
                unused = not self.family.uncond_at_scale_one and request.cfg_scale == 1
                cond, uncond = encoder.encode_schedules(text, text if unused else negative_text, self.sampling_steps)
            result.extra_params = run_infotext.extra_params(self, loras, encoder, vae_file)
            result.warnings = list(loras.warnings) + self.control_notes
            styles_note = self.addons.styles.unknown_note(request.styles)
            if styles_note:
                result.warnings.append(styles_note)
            result.warnings += self._sampler_notes()[1]
            result.warnings += self.family.notes(request, self.pipe)
            self._previewer, preview_note = self._make_previewer()
            if preview_note:
                result.warnings.append(preview_note)
            for batch in range(request.n_iter):
                if job.interrupted:
                    break
                self._run_batch(batch, cond, uncond, result, writer)
        result.warnings += self.memory_notes
        result.interrupted = job.interrupted
        self._detected_maps(result, writer)
        if self.policy.make_grid and len(result.images) >= 2:
            result.grid = make_grid(result.images)
            result.grid.info[infotext.INFOTEXT_KEY] = result.infotexts[0]
            if self.policy.save_grid:
                result.grid_path = writer.save_grid(result.images, request.mode, result.infotexts[0],
                                                    self._name_fields(result, 0))
        return result

    def _detected_maps(self, result: GenerationResult, writer: OutputWriter | None) -> None:
        """The units' maps after the pictures, and saved with them (engine/runs/detected_maps.py)."""
        maps = self.detected_maps.images(self.request.width, self.request.height) if result.images else []
        if self.policy.run.return_detected_maps:
            result.detected_maps = [image for image, _ in maps]
        if self.policy.save_images and self.policy.run.save_detected_maps and writer is not None:
            for image, module in maps:
                if module != "none":
                    writer.save_detected_map(image, self.request.mode, module)

    def _loras(self, networks: list):
        """The prompt's LoRAs merged for the block (into the UNet or the flow transformer, and the
        text encoders), the weights restored after."""
        return applied_loras(self.pipe, networks, self.addons.loras, self.model.family)

    def _controlnets(self):
        """The request's ControlNet units attached to the UNet for this job (or nothing)."""
        units = self.request.active_controlnet_units
        if not units:
            return contextlib.nullcontext()
        request, unet, library = self.request, self.pipe.unet, self.addons.controlnets
        for index, unit in units:  # the checkpoint may have changed since the request was checked
            if not unit.model_free and library.family(unit.model) != self.model.family:
                raise RequestError(f"ControlNet unit {index}: '{unit.model}' does not fit the loaded "
                                   f"checkpoint ({self.model.info.model_name}); pick one of its family", "model")
        frame = self.start.frame_control
        units = [(index, unit.replace(image=frame(unit.image), mask=frame(unit.mask))) for index, unit in units]
        image, mask = self.start.control_fallback()
        placement = self.model.placement
        references = [(index, unit) for index, unit in units if unit.model_free]
        units = [(index, unit) for index, unit in units if not unit.model_free]
        adapters = [(index, unit) for index, unit in units if library.is_ip_adapter(unit.model)]
        units = [(index, unit) for index, unit in units if not library.is_ip_adapter(unit.model)]
        prepared = control.prepare(units, library, request.width, request.height,
                                   placement.resting_device, unet.dtype, image, mask, library.folder, unet=unet)
        images = ip_adapter.prepare(adapters, library, placement.device, unet.dtype, image)

        def encoded(pixels):
            return encode(self.pipe.vae, pixels, faults=self.addons.faults)

        referenced = reference.prepare(references, request.width, request.height, image, encoded)
        self.detected_maps.keep(sorted(prepared + images + referenced, key=lambda item: item.index))
        self.control_notes = [item.note for item in prepared if item.note]
        control.add_latent_fixes(prepared, request.width, request.height, encoded)
        # An LCM-style UNet (guidance embedded) has no negative half in its batch.
        cfg = request.cfg_scale > 1 and getattr(unet.config, "time_cond_proj_dim", None) is None
        alphas = self.model.sigma_table(device=placement.device).alphas_cumprod
        return _both(_both(placement.controlnets(item.net for item in prepared if item.tokens is None),
                           control.attached(unet, prepared, cfg=cfg, progress=self._control_progress,
                                            vae_scale=self.model.vae_scale_factor, alphas_cumprod=alphas,
                                            prediction_type=self.model.prediction_type)),
                     _both(ip_adapter.attached(unet, images, cfg=cfg, progress=self._control_progress,
                                               device=placement.device),
                           reference.attached(unet, referenced, cfg, self._control_progress, alphas,
                                              self.model.is_sdxl, self.seeds.seeds[0])))

    def _control_progress(self) -> tuple[int, int] | None:
        """(step, steps) of the pass now sampling, or None while control is off (an inner pass
        over another frame, like the face detailer's crops)."""
        run = self._control_pass
        if run is None:
            return None
        return run._control_step, max(1, run.sampling_steps)

    def second_pass(self, request: GenerationRequest, seed: int, subseed: int, keep_control: bool = False,
                    checkpoint: str | None = None, exact_steps: bool = False, hires: bool = False) -> Image.Image:
        """An img2img pass inside this job (on the lane already, so it is not queued): the
        prompts are the job's (after styles, with its LoRAs still loaded) unless given.
        `keep_control`: the job's ControlNet units act in it too (a pass over the same frame,
        like hires fix); otherwise they are off for it. `checkpoint`: run by that checkpoint,
        which takes the job's LoRAs from the prompt's tags (ControlNet stays with the job's)."""
        refiner = self.request.refiner if hires else None
        if refiner is not None and self.refiner_state.first_pass_switched and not checkpoint:
            # A1111 leaves the refiner loaded after a first pass it took over: the hires pass is its.
            checkpoint, refiner = refiner.checkpoint, None
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
                extensions={}, controlnet_units=(), save_images=False, save_grid=False, refiner=refiner)
            fixed = exact_steps or (request.img2img is not None and request.img2img.exact_steps)
            # A pass inside the job is sized on the SD grid (8 pixels); a model with a coarser one
            # (FLUX.1 and SD 3.x: 16) takes the nearest size on its own, rather than failing the job.
            step = family_of(model.family).size_step
            request = request.replace(width=max(step, round(request.width / step) * step),
                                      height=max(step, round(request.height / step) * step))
            request = request.with_img2img(exact_steps=fixed).validate()
            inner = GenerationRun(self.job, request, model, self.policy.inner_pass(), self.addons)
            inner.memory_notes = self.memory_notes
            inner.refiner_state, inner.hires_pass, inner.borrow_model = self.refiner_state, hires, self.borrow_model
            outer, self._control_pass = self._control_pass, (inner if keep_control and own else None)
            if keep_control and own and hires:
                self.detected_maps.saw_hires_pass(request.width, request.height)
            try:
                return inner.run(None).images[0]
            finally:
                self._control_pass = outer

    def vae_roundtrip(self, image: Image.Image, width: int, height: int,
                      latent_mode: str | None = None) -> Image.Image:
        scale = self.model.vae_scale_factor
        with torch.inference_mode():
            latents = encode(self.pipe.vae, image_tensor(image), faults=self.addons.faults)
            if latent_mode is not None:
                mode, antialias = LATENT_UPSCALE_MODES[latent_mode]
                latents = torch.nn.functional.interpolate(latents.float(), size=(height // scale, width // scale),
                                                          mode=mode, antialias=antialias)
            images = decode_fitting(self.pipe.vae, latents, self.memory_notes, faults=self.addons.faults)
            return self.pipe.image_processor.postprocess(images, output_type="pil")[0]

    def _run_batch(self, batch: int, cond: ScheduledConditioning, uncond: ScheduledConditioning,
                   result: GenerationResult, writer: OutputWriter) -> None:
        request, job = self.request, self.job
        job.skipped = False
        job.set_batch(batch)
        self._control_step = 0
        seeds, subseeds = self.seeds.batch(batch, request.batch_size)
        self._writing = (writer, result)
        images = self.start.finish(self._sample(seeds, subseeds, cond, uncond, batch), batch, seeds, subseeds,
                                   self.save_before)
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
        # A refiner's switch (in this pass or the hires pass) is known once the image is made.
        extra = {**result.extra_params, **self.refiner_state.notes}
        return infotext.build(result.prompt, result.negative_prompt,
                              image_params(self.request, self.model, seed, subseed, extra))

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
        count = len(seeds)
        noise = self._noise(seeds, subseeds)
        denoiser = self._denoiser(cond, uncond, count, batch)
        refiner = self._refiner_switch(count)
        if refiner is not None:
            denoiser.before_unet = refiner
        with torch.inference_mode(), refiner or contextlib.nullcontext():
            first_noise = noise.next()
            start = self.start.latent_start(batch, first_noise, denoiser, seeds)
            sampling = BatchSampling(self._plan(), denoiser, noise, seeds, self._callback(batch, denoiser))
            with memory_guard.stage("denoise", faults=self.addons.faults):
                latents = self.start.after_sampling(sampling.run(first_noise, start), denoiser)
            self.negative_skips += denoiser.skipped_uncond
            # The model that finished the sampling decodes (the refiner when it took over).
            pipe = refiner.pipe if refiner is not None and refiner.pipe is not None else self.pipe
            images = decode_fitting(pipe.vae, latents, self.memory_notes, faults=self.addons.faults)
            return list(pipe.image_processor.postprocess(images, output_type="pil"))

    def _refiner_switch(self, count: int) -> RefinerSwitch | None:
        """This batch's refiner switch, when the job has a refiner this pass may use."""
        choice, run = self.request.refiner, self.policy.run
        if choice is None or self.borrow_model is None:
            return None
        plan = RefinerPass(choice.checkpoint, choice.switch_at, run.refiner_by_steps,
                           hires_job=self.hires_pass or any(getattr(e.extension, "hires_pass", False)
                                                            for e in self.active),
                           hires_pass=self.hires_pass, hires_setting=run.hires_refiner_pass)
        if not plan.enabled or self.model.info.matches(choice.checkpoint):
            return None  # as in A1111: no switch to the model that is already sampling
        calls = self.sampling_steps * (2 if self.sampler.second_order else 1)
        return RefinerSwitch(self, plan, calls, count)

    def time_ids(self, model: LoadedModel) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """SDXL's micro-conditioning for `model` (positive, negative; None: as positive): original
        size, crop top-left and target size as A1111 sends them; for the refiner the size, the crop
        and the aesthetic score of each prompt."""
        request = self.request
        if not model.is_sdxl:
            return None, None
        if model.is_refiner:
            high, low = self.policy.run.refiner_aesthetic_scores
            return (torch.tensor([[request.height, request.width, 0, 0, high]], dtype=torch.float32),
                    torch.tensor([[request.height, request.width, 0, 0, low]], dtype=torch.float32))
        return torch.tensor([[request.height, request.width, 0, 0, request.height, request.width]],
                            dtype=torch.float32), None

    def conditioning_source(self, cond: ScheduledConditioning, uncond: ScheduledConditioning, count: int,
                            device) -> Any:
        """The denoiser's conditioning: the prompts of the step sampling now (prompt editing)."""
        state = self._conditioning_state

        def conditioning() -> Conditioning:
            step = state["step"]
            positive, negative = cond.at(step), uncond.at(step)
            return Conditioning(
                positive.embeds.to(device).expand(count, -1, -1), negative.embeds.to(device).expand(count, -1, -1),
                None if positive.pooled is None else positive.pooled.to(device).expand(count, -1),
                None if negative.pooled is None else negative.pooled.to(device).expand(count, -1))

        return conditioning

    def _noise(self, seeds, subseeds) -> ImageNoise:
        """The noise of one batch: A1111's per-image generators from the source the job names."""
        request = self.request
        resize = (request.seed_resize[1], request.seed_resize[0]) if request.seed_resize else None
        return ImageNoise(latent_shape(request.width, request.height, self.model.vae_scale_factor,
                                       self.family.latent_channels),
                          list(seeds), list(subseeds), request.subseed_strength, resize,
                          source=request.randn_source or DEFAULT_RANDN_SOURCE, device=self.model.device,
                          eta_noise_seed_delta=request.eta_noise_seed_delta or 0)

    def _plan(self) -> SamplingPlan:
        request, run = self.request, self.policy.run
        return SamplingPlan(
            self.sampler, self.schedule, request.steps,
            samplers.sampler_parameters(self.sampler, request, self.eta), run.always_discard,
            run.schedule_options, run.uni_pc, run.sgm_noise_multiplier and not self.family.flow, self.model.is_sdxl)

    def _denoiser(self, cond: ScheduledConditioning, uncond: ScheduledConditioning, count: int,
                  batch: int) -> CFGDenoiser:
        request, unet = self.request, self.family.denoising_module(self.pipe, self.request)
        device = self.model.device
        mode = {"k": "k", "timesteps": "eps", "lcm": "lcm"}[self.sampler.kind]
        table = self.model.sigma_table(lcm=mode == "lcm", device=device, shift=self.flow_shift)
        self._conditioning_state = {"step": 1}
        conditioning = self.conditioning_source(cond, uncond, count, device)
        job = self.job

        def before_call() -> None:
            if job.should_stop_sampling:
                raise Interrupted()

        time_ids, uncond_time_ids = self.time_ids(self.model)
        embedded = getattr(unet.config, "time_cond_proj_dim", None)
        return CFGDenoiser(unet, table, self.model.prediction_type, request.cfg_scale, conditioning,
                           mode=mode, image_cond=self.start.image_conditioning(count, batch), time_ids=time_ids,
                           s_min_uncond=request.s_min_uncond or 0.0, cfg_rescale=request.cfg_rescale,
                           guidance_embedding=guidance_embedding(request.cfg_scale, embedded) if embedded else None,
                           before_call=before_call, uncond_time_ids=uncond_time_ids,
                           uncond_at_scale_one=self.family.uncond_at_scale_one)

    @property
    def flow_shift(self) -> float | None:
        """The flow shift of this job (None for the SD families)."""
        return self.family.shift(self.request, self.model.vae_scale_factor)

    def _sampler_notes(self) -> tuple[dict[str, Any], list[str]]:
        """The sampler parameters' infotext keys, and warnings for those this sampler cannot use."""
        return samplers.parameter_notes(self.sampler, self.request.replace(eta=self.eta),
                                        self.policy.run.always_discard)

    @property
    def eta(self) -> float:
        return samplers.eta_for(self.sampler, self.request.eta, self.policy.run.eta_defaults)

    def _negative_skipped(self) -> None:
        self.negative_skips += 1

    @property
    def previewer(self) -> Previewer | None:
        return self._previewer

    def _make_previewer(self) -> tuple[Previewer | None, str | None]:
        """How this run's previews are made (None: no previews), and why not as the setting
        says when its decoder is missing."""
        if not self.policy.preview_every:
            return None, None
        method = self.policy.preview_method
        if self.family.flow:
            method = "Full"  # the approximate decoders are the SD families' latents
        return Previewer.for_run(method, self.pipe, self.model.family, self.addons.previews,
                                 self.model.device, self.family.dtype(self.pipe))

    def _callback(self, batch: int, denoiser: CFGDenoiser):
        job, every, previewer = self.job, self.policy.preview_every, self._previewer
        state = self._conditioning_state

        def on_step(index: int, denoised: torch.Tensor) -> None:
            self._control_step = index + 1
            state["step"] = index + 2  # prompt editing: the step that samples next (1-based)
            job.advance()
            if previewer is not None and (index + 1) % every == 0:
                job.set_preview(previewer(denoised))  # its pipe follows a refiner's switch

        return on_step


@contextlib.contextmanager
def _both(first, second):
    """Two contexts as one: `second` inside `first`, undone in reverse."""
    with first, second:
        yield

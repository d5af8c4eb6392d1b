"""Running one generation job: the batch loop, progress, previews, infotext and saving."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import infotext, samplers
from .conditioning import Conditioning, PromptEncoder
from .jobs import Job
from .models import CheckpointInfo
from .outputs import OutputWriter, make_grid
from .pipelines import LoadedModel
from .preview import latents_to_rgb
from .request import GenerationRequest
from .seeds import JobSeeds, initial_latents, job_seeds, step_generators
from .version import VERSION


@dataclass(frozen=True)
class OutputPolicy:
    """What to do with finished images (from the settings and the request)."""

    save_images: bool = True
    save_grid: bool = True
    make_grid: bool = True
    preview_every: int = 0  # 0: no live previews


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
    extra_params: dict[str, Any] = field(default_factory=dict)

    def gallery(self) -> list[tuple[Image.Image, str]]:
        """(image, infotext) pairs as a gallery shows them: the grid first when there is one."""
        items = list(zip(self.images, self.infotexts))
        if self.grid is not None:
            items.insert(0, (self.grid, self.infotexts[0]))
        return items


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


class Txt2ImgRun:
    """One txt2img job on one loaded model."""

    def __init__(self, job: Job, request: GenerationRequest, model: LoadedModel, policy: OutputPolicy):
        self.job = job
        self.request = request
        self.model = model
        self.policy = policy
        self.sampler, self.schedule = samplers.resolve(request.sampler_name, request.scheduler)
        self.seeds: JobSeeds = job_seeds(request)
        self.pipe = model.pipeline_for("txt2img")
        self._batch_steps = request.steps

    def run(self, writer: OutputWriter) -> GenerationResult:
        request, job = self.request, self.job
        job.set_total(request.steps * request.n_iter, request.n_iter)
        cond, uncond = PromptEncoder(self.pipe, self.model.family).encode_pair(
            request.prompt, request.negative_prompt)
        result = GenerationResult(request.replace(seed=self.seeds.seeds[0], subseed=self.seeds.subseeds[0]),
                                  self.model.info, [], [], [], [],
                                  job_timestamp=dt.datetime.now().strftime("%Y%m%d%H%M%S"))
        for batch in range(request.n_iter):
            if job.interrupted:
                break
            job.skipped = False
            job.batch_index = batch
            seeds, subseeds = self.seeds.batch(batch, request.batch_size)
            images = self._sample(seeds, subseeds, cond, uncond, batch)
            for image, seed, subseed in zip(images, seeds, subseeds):
                text = infotext.build(request.prompt, request.negative_prompt,
                                      image_params(request, self.model, seed, subseed, {}))
                image.info[infotext.INFOTEXT_KEY] = text
                result.images.append(image)
                result.seeds.append(seed)
                result.subseeds.append(subseed)
                result.infotexts.append(text)
                result.paths.append(
                    writer.save_image(image, request.mode, seed, text) if self.policy.save_images else None)
        result.interrupted = job.interrupted
        if self.policy.make_grid and len(result.images) >= 2:
            result.grid = make_grid(result.images)
            result.grid.info[infotext.INFOTEXT_KEY] = result.infotexts[0]
            if self.policy.save_grid:
                result.grid_path = writer.save_grid(result.images, request.mode, result.infotexts[0])
        return result

    def _sample(self, seeds, subseeds, cond: Conditioning, uncond: Conditioning,
                batch: int) -> list[Image.Image]:
        request, pipe = self.request, self.pipe
        device, dtype = pipe.device, pipe.unet.dtype
        count = len(seeds)
        latents = initial_latents(request, seeds, subseeds, self.model.vae_scale_factor)
        pipe.scheduler = samplers.build_scheduler(self.sampler, self.schedule,
                                                  self.model.scheduler_config, seeds[0])
        kwargs = dict(
            prompt_embeds=cond.embeds.expand(count, -1, -1),
            negative_prompt_embeds=uncond.embeds.expand(count, -1, -1),
            num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
            width=request.width, height=request.height,
            latents=latents.to(device, dtype), generator=step_generators(seeds),
            callback_on_step_end=self._callback(batch),
            callback_on_step_end_tensor_inputs=["latents"], output_type="pil",
        )
        if self.model.is_sdxl:
            kwargs["pooled_prompt_embeds"] = cond.pooled.expand(count, -1)
            kwargs["negative_pooled_prompt_embeds"] = uncond.pooled.expand(count, -1)
        with torch.inference_mode():
            return list(pipe(**kwargs).images)

    def _callback(self, batch: int):
        job, every, family = self.job, self.policy.preview_every, self.model.family
        n_iter = self.request.n_iter

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            if step == 0:
                # Second-order samplers call the model more often than `steps`: use the real count.
                self._batch_steps = max(1, pipe.num_timesteps)
                job.set_total(self._batch_steps * n_iter)
                job.step = batch * self._batch_steps
            job.advance()
            if every and (step + 1) % every == 0 and "latents" in tensors:
                job.set_preview(latents_to_rgb(tensors["latents"][:1], family)[0])
            if job.should_stop_sampling:
                pipe._interrupt = True
            return tensors

        return on_step_end

"""The refiner, as A1111 1.10 runs it: part-way through sampling, another checkpoint of the same
latent space takes over the UNet calls. The sampler, its schedule, its noise and its state go
on: one sampling run with a change of model, not a second img2img pass.

When: before each UNet call, the share of the work done is (999 - t) / 1000 for the training
timestep t nearest the call's noise level (with the refiner_switch_by_sample_steps setting: the
share of the calls made); the refiner takes over at the first call where that share reaches
`switch_at`, and keeps the rest of the batch.

In a hires-fix job the hires_fix_refiner_pass setting names the passes it may act in. A first
pass that switched leaves A1111 with the refiner loaded, so its hires pass runs wholly on the
refiner; GenerationRun.second_pass does the same.

Memory: the job's model goes to RAM (ModelManager.borrowed) before the refiner is placed, so
the two are never on the GPU together; the refiner decodes the batch (its VAE, with the job's
VAE choice), then the job's model comes back for the next batch, as A1111 reloads it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import CheckpointError, NotFoundError, RequestError
from engine.models.loading import latent_space_of
from engine.networks.lora import applied_loras
from engine.prompts.conditioning import PromptEncoder
from engine.request import GenerationRequest
from engine.runs import prediction_setup
from engine.sampling.denoiser import CFGDenoiser, guidance_embedding

if TYPE_CHECKING:
    from engine.models.pipelines import LoadedModel
    from engine.models.registry import ModelRegistry
    from engine.runs.generation import GenerationRun

HIRES_REFINER_PASSES = ("first pass", "second pass", "both passes")
LATENT_SPACE_LABELS = {"sd": "SD 1.x/2.x", "sdxl": "SDXL"}


def complete_refiner(request: GenerationRequest, registry: ModelRegistry, current: LoadedModel | None,
                     allow_unsafe: bool = False) -> GenerationRequest:
    """The request's refiner found by name (its title from now on) and checked to share the
    loaded model's latent space, so a bad choice fails before the job waits in the queue."""
    choice = request.refiner
    if choice is None:
        return request
    try:
        info = registry.find(choice.checkpoint)
    except NotFoundError as error:
        raise RequestError(f"Refiner: {error.message}", "refiner_checkpoint") from error
    if current is not None:
        try:
            space = latent_space_of(info, allow_unsafe)
        except CheckpointError as error:
            raise RequestError(f"Refiner: {error.message}", "refiner_checkpoint") from error
        check_same_latent_space(info.name, space, current)
    return request.replace(refiner=choice.replace(checkpoint=info.title))


def check_same_latent_space(name: str, space: str | None, model: LoadedModel) -> None:
    if space is not None and space != model.latent_space:
        raise RequestError(
            f"Refiner '{name}' is a {LATENT_SPACE_LABELS.get(space, space)} model, but "
            f"{model.info.model_name} is {LATENT_SPACE_LABELS.get(model.latent_space, model.latent_space)}: "
            "a refiner continues the same latents, so it must be of the same family", "refiner_checkpoint")


def refiner_label(model: LoadedModel) -> str:
    """How the infotext names the refiner: the file's name without folders and suffix, and the
    short hash (A1111's short title)."""
    name = Path(model.info.model_name).name
    return f"{name} [{model.info.short_hash}]" if model.info.short_hash else name


@dataclass
class RefinerJobState:
    """What the passes of one job share about the refiner: the infotext keys of a switch, and
    whether the first pass switched (its hires pass then runs on the refiner)."""

    notes: dict[str, Any] = field(default_factory=dict)
    first_pass_switched: bool = False


@dataclass(frozen=True)
class RefinerPass:
    """The refiner of one pass (the first, or the hires pass) and whether it may act there."""

    checkpoint: str
    switch_at: float
    by_steps: bool
    hires_job: bool
    hires_pass: bool
    hires_setting: str

    @property
    def enabled(self) -> bool:
        if not self.hires_job:
            return True
        wanted = ("second pass", "both passes") if self.hires_pass else ("first pass", "both passes")
        return self.hires_setting in wanted


class RefinerSwitch:
    """One batch's switch: the denoiser's before_unet hook; a context that gives the job's model
    back when the batch is done."""

    def __init__(self, run: GenerationRun, plan: RefinerPass, total_calls: int, count: int):
        self.run = run
        self.plan = plan
        self.total_calls = max(1, total_calls)  # A1111's total steps: second-order samplers' count twice
        self.count = count  # images in the batch
        self.model: LoadedModel | None = None  # the refiner, once it has taken over
        self.pipe = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RefinerSwitch:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def share_done(self, denoiser: CFGDenoiser, sigma: torch.Tensor) -> float:
        """A1111's completed ratio at this call."""
        if self.plan.by_steps:
            return denoiser.calls / self.total_calls
        level = sigma.max()
        if denoiser.mode == "eps":  # the timestep samplers call with the timestep itself
            timestep = level.to(torch.int64).cpu()
        else:
            sigmas = denoiser.table.sigmas
            timestep = torch.argmin(torch.abs(sigmas - level.to(sigmas.device))).cpu()
        return float((999 - timestep) / 1000)

    def __call__(self, denoiser: CFGDenoiser, sigma: torch.Tensor) -> None:
        if self.model is not None or self.share_done(denoiser, sigma) < self.plan.switch_at:
            return
        self._switch(denoiser)

    def _switch(self, denoiser: CFGDenoiser) -> None:
        run = self.run
        # Weights moved or merged here must stay ordinary tensors (the sampling runs in
        # inference mode): later jobs change them in place.
        with torch.inference_mode(False), torch.no_grad():
            # Off the GPU first, whether it is the job's own model or a hires checkpoint it
            # borrowed: the two are never there together.
            run.model.set_aside()
            model = self._stack.enter_context(run.borrow_model(self.plan.checkpoint))
            check_same_latent_space(model.info.name, model.latent_space, run.model)
            model.use_vae(run.request.vae, run.addons.vaes)
            # Its own prediction type and noise table (the user's override for it included).
            prediction_setup.use_for_job(model, run.request, run.policy.run, run.sampler)
            pipe = model.pipeline_for(run.start.task)
            # The prompt's LoRAs act on the refiner's layers of the same names, as in A1111; a
            # refiner with none of them is not worth a warning.
            self._stack.enter_context(applied_loras(pipe, run.networks, run.addons.loras, model.family))
            encoder = PromptEncoder(pipe, model.family, clip_skip=run.request.clip_skip,
                                    emphasis=run.request.emphasis,
                                    **run.addons.embeddings.encoder_options(model))
            cond, uncond = encoder.encode_schedules(run.final_prompt, run.final_negative, run.sampling_steps)
        count = self.count
        time_ids, uncond_time_ids = run.time_ids(model)
        embedded = getattr(pipe.unet.config, "time_cond_proj_dim", None)
        image_cond = denoiser.image_cond if pipe.unet.config.in_channels != 4 else None
        if pipe.unet.config.in_channels != 4 and image_cond is None:
            raise RequestError(f"Refiner '{model.info.model_name}' is an inpainting model; it can refine only "
                               "an inpainting job", "refiner_checkpoint")
        denoiser.use_model(
            pipe.unet, model.sigma_table(lcm=denoiser.mode == "lcm", device=model.device), model.prediction_type,
            run.conditioning_source(cond, uncond, count, model.device), time_ids=time_ids,
            uncond_time_ids=uncond_time_ids, image_cond=image_cond,
            guidance_embedding=guidance_embedding(run.request.cfg_scale, embedded) if embedded else None)
        self.model, self.pipe = model, pipe
        previewer = run.previewer
        if previewer is not None:  # "Full" previews: decoded by the model that samples now
            home, previewer.pipe = previewer.pipe, pipe
            self._stack.callback(setattr, previewer, "pipe", home)
        self._note(model)

    def _note(self, model: LoadedModel) -> None:
        plan, state = self.plan, self.run.refiner_state
        notes = state.notes
        if plan.by_steps:
            notes["Refiner switch by sampling steps"] = True
        if plan.hires_job and plan.hires_setting != "second pass":
            notes["Hires refiner"] = plan.hires_setting
        notes["Refiner"] = refiner_label(model)
        notes["Refiner switch at"] = plan.switch_at
        if not plan.hires_pass:
            state.first_pass_switched = True

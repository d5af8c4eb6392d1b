"""What an always-on extension's process hook gets with each image (its `ctx`): the services of
the run, never the run itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from engine.memory import memory_guard
from engine.memory.memory_guard import FaultPlan
from engine.postprocess.faces import FACE_DETAILER, detail_faces, restore_with_model
from engine.request import GenerationRequest

if TYPE_CHECKING:
    from engine.runs.generation import GenerationRun


@dataclass(frozen=True)
class ImageContext:
    """The services an always-on extension's process hook gets with each image (its `ctx`): a
    second pass inside the job, a VAE round trip, upscaling, face restoration, the device, a
    logger and a progress note. Never the run itself: what it holds is the engine's own."""

    _run: GenerationRun
    seed: int
    subseed: int
    log = logging.getLogger("engine.extensions")

    @property
    def device(self):
        """The torch device the job runs on."""
        return self._run.model.device

    def note(self, text: str) -> None:
        """A line the progress display shows while the hook works."""
        self._run.job.textinfo = text

    def upscale(self, image: Image.Image, upscaler: str, width: int, height: int) -> Image.Image:
        """`image` at width x height by a model upscaler (its listed name) on the job's device."""
        return self._run.addons.upscalers.upscale(image, upscaler, width, height, self.device,
                                                  faults=self.faults)

    def restore_faces(self, image: Image.Image, restorer: str, strength: float = 0.4,
                      fidelity: float = 0.5) -> Image.Image:
        """Each face found restored: by the face detailer (the job's model redraws it at
        `strength`) or by a GFPGAN/CodeFormer model (`fidelity`: CodeFormer's weight)."""
        if restorer == FACE_DETAILER:
            request = self._run.request
            return detail_faces(image, request.replace(steps=max(request.steps, 4)), strength, self.second_pass,
                                faults=self.faults, detector=self._run.addons.faces.detector)
        return restore_with_model(image, self._run.addons.faces, restorer, self.device, fidelity=fidelity,
                                  faults=self.faults)

    def second_pass(self, request: GenerationRequest, keep_control: bool = False,
                    checkpoint: str | None = None, exact_steps: bool = False,
                    hires: bool = False) -> Image.Image:
        """Run `request` (an img2img request) as part of this job, with this image's seeds and
        the job's prompts unless the request brings its own; return its image. `keep_control`:
        the job's ControlNet units act in it (only for a pass over the same frame).
        `checkpoint`: another checkpoint runs it (the job's model is back afterwards).
        `exact_steps`: it runs request.steps steps (of a longer schedule), not steps x strength.
        `hires`: it is the job's hires pass, which the job's refiner acts in as the
        hires_fix_refiner_pass setting says."""
        return self._run.second_pass(request, self.seed, self.subseed, keep_control, checkpoint, exact_steps,
                                     hires)

    def vae_roundtrip(self, image: Image.Image, width: int, height: int,
                      latent_mode: str | None = None) -> Image.Image:
        """The picture encoded and decoded by the job's VAE, its latents scaled to width x height
        with `latent_mode` (a latent upscaler's name) when given: what a second pass at denoising
        strength 0 gives."""
        return self._run.vae_roundtrip(image, width, height, latent_mode)

    def save_before(self, stage: str, image: Image.Image) -> None:
        """Keep a copy of the image as it is before `stage` when the settings ask for one."""
        self._run.save_before(stage, image, self.seed, self.subseed)

    def memory_stage(self, name: str):
        """A context manager naming the stage for out-of-memory messages (the advice for `name`)."""
        return memory_guard.stage(name, faults=self.faults)

    @property
    def faults(self) -> FaultPlan | None:
        """The job's test plan of memory faults, for the extension's own memory_guard.stage()."""
        return self._run.addons.faults

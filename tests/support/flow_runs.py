"""Running one FLUX.1 / SD 3.x job through the studio's generation run in a test (64x64, Euler,
4 steps, seed 7, CFG 1 unless the test says otherwise), and reading what it made. Test-only."""

from __future__ import annotations

import numpy as np
import torch

from engine.job_results import OutputPolicy
from engine.jobs import Job
from engine.request import GenerationRequest
from engine.runs.generation import GenerationRun

SMALL_JOB = {"width": 64, "height": 64, "steps": 4, "seed": 7, "sampler_name": "Euler", "cfg_scale": 1.0}


def run_job(model, addons, **fields):
    """(the run, its result) of a job on `model` with SMALL_JOB's fields and `fields`."""
    request = GenerationRequest(**{**SMALL_JOB, **fields}).validate()
    run = GenerationRun(Job(lambda job: None), request, model, OutputPolicy(save_images=False, save_grid=False),
                        addons)
    return run, run.run(None)


def first_noise(run) -> torch.Tensor:
    """The starting noise of the run's first image (what diffusers is handed as its latents)."""
    return run._noise(run.seeds.seeds[:1], run.seeds.subseeds[:1]).next()


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)

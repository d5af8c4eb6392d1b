"""A job's prediction type and noise schedule: the checkpoint's own (engine/models/prediction.py),
the user's override for it, the request's noise schedule; set on the model before it samples,
refused where a sampler cannot run on it, and written into the infotext where the ecosystem
writes it."""

from __future__ import annotations

from typing import Any

from engine.errors import RequestError
from engine.job_results import RunOptions
from engine.models.pipelines import LoadedModel
from engine.models.prediction import EDM, FLOW, ZERO_TERMINAL_SNR, ModelPrediction, in_effect, override_for
from engine.request import GenerationRequest


def use_for_job(model: LoadedModel, request: GenerationRequest, run: RunOptions, sampler) -> ModelPrediction:
    """Set what `model` samples with in this job; RequestError when `sampler` cannot sample it."""
    info = model.info
    if model.detected.prediction_type == FLOW:  # a flow model is what its family is: no override
        model.use_prediction(model.detected)
        return model.detected
    override = override_for(run.prediction_overrides, (info.title, info.name, info.model_name, info.short_hash))
    prediction = in_effect(model.detected, override, request.noise_schedule)
    if prediction.prediction_type == EDM and sampler.kind != "k":
        raise RequestError(
            f"{sampler.name} cannot sample {info.model_name}: it is an EDM model (Playground v2.5 style, "
            f"{prediction.source}), which only the k-diffusion samplers (Euler, Euler a, DPM++ 2M, ...) "
            "can sample. Pick one of those.", "sampler_name")
    model.use_prediction(prediction)
    return prediction


def infotext_params(prediction: ModelPrediction, request: GenerationRequest) -> dict[str, Any]:
    """The keys the ecosystem writes: A1111's `Noise Schedule` when zero terminal SNR is in
    effect, the A1111 CFG Rescale extension's `CFG Rescale` when rescaling. Nothing is written
    for the prediction type itself: neither A1111 nor Forge write a key for it."""
    params: dict[str, Any] = {}
    if prediction.zero_snr:
        params["Noise Schedule"] = ZERO_TERMINAL_SNR
    if request.cfg_rescale > 0:
        params["CFG Rescale"] = request.cfg_rescale
    return params

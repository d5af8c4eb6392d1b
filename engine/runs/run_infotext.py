"""What a generation run writes into its pictures' infotext beyond the fields every picture has:
VAE, clip skip, emphasis, RNG, sampler parameters, the prediction and family keys (Distilled CFG
Scale, Shift), the VAE / text encoder files (Forge's Module N), the schedule settings that acted,
ENSD, the task's own keys, ControlNet units, extensions, LoRA and embedding hashes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.extensions import registry as extensions
from engine.files import HashCache
from engine.job_results import hash_list
from engine.runs import prediction_setup
from engine.runs.seeds import DEFAULT_RANDN_SOURCE
from engine.sampling import samplers


def extra_params(job_run, loras, encoder, vae_file) -> dict[str, Any]:
    """The infotext keys of run `job_run` beyond the prompt, steps, sampler, CFG, seed and size
    (job_results.image_params writes those)."""
    request = job_run.request
    extra: dict[str, Any] = {}
    if vae_file is not None:
        extra["VAE hash"] = job_run.addons.vaes.short_hash(vae_file)
        extra["VAE"] = vae_file.name
    if request.clip_skip > 1 and not job_run.model.is_sdxl and not job_run.family.flow:
        extra["Clip skip"] = request.clip_skip
    if request.emphasis not in ("", "Original"):
        extra["Emphasis"] = request.emphasis
    if request.randn_source not in ("", DEFAULT_RANDN_SOURCE):
        extra["RNG"] = request.randn_source
    extra.update(job_run._sampler_notes()[0])
    extra.update(prediction_setup.infotext_params(job_run.prediction, request))
    extra.update(job_run.family.infotext_params(request, job_run.pipe))
    extra.update(module_params(job_run.model, job_run.addons.vaes.hashes))
    extra.update(schedule_params(job_run))
    if request.eta_noise_seed_delta and job_run.sampler.uses_ensd and job_run.eta != 0:
        extra["ENSD"] = request.eta_noise_seed_delta
    extra.update(job_run.start.task_params())
    for index, unit in job_run.request.active_controlnet_units:
        extra[f"ControlNet {index}"] = unit.infotext_value()
    extra.update(extensions.infotext(job_run.addons.extensions, job_run.active, request))
    extra["Lora hashes"] = hash_list(loras.hashes)
    extra["TI hashes"] = hash_list(job_run.addons.embeddings.hashes(encoder.used_embeddings))
    return {key: value for key, value in extra.items() if value is not None}

def module_params(model, hashes: HashCache) -> dict[str, Any]:
    """Forge's `Module N: <file name without suffix>` for each VAE / text encoder file the model
    loaded with, and their short sha256 (as `Lora hashes` lists LoRAs')."""
    params: dict[str, Any] = {}
    shorts = {}
    for index, path in enumerate(model.module_paths):
        stem = Path(path).stem
        params[f"Module {index + 1}"] = stem
        shorts[stem] = hashes.sha256(Path(path))[:10]
    if shorts:
        params["Module hashes"] = hash_list(shorts)
    return params

def schedule_params(job_run) -> dict[str, Any]:
    """The schedule settings A1111 writes when they act (k-diffusion samplers only), for run `job_run`."""
    if not job_run.sampler.takes_schedule:
        return {}
    run, params = job_run.policy.run, {}
    options = run.schedule_options
    label = samplers.effective_schedule(job_run.sampler, job_run.schedule)
    table = job_run.model.sigma_table(shift=job_run.flow_shift)
    if options.get("sigma_min") and label and abs(options["sigma_min"] - table.sigma_min) > 1e-9:
        params["Schedule min sigma"] = options["sigma_min"]
    if options.get("sigma_max") and label and abs(options["sigma_max"] - table.sigma_max) > 1e-9:
        params["Schedule max sigma"] = options["sigma_max"]
    if options.get("rho") and label in ("Karras", "Polyexponential") and \
            options["rho"] != {"Karras": 7.0, "Polyexponential": 1.0}[label]:
        params["Schedule rho"] = options["rho"]
    if label == "Beta":
        params["Beta schedule alpha"] = options.get("beta_dist_alpha", 0.6)
        params["Beta schedule beta"] = options.get("beta_dist_beta", 0.6)
    if run.sgm_noise_multiplier and job_run.request.mode == "txt2img":
        params["SGM noise multiplier"] = True
    return params

"""Settings of the samplers and of img2img that client programs of the ecosystem set by name
(often for one request, in `override_settings`): eta, the sigma parameters, ENSD, and the img2img
steps, colour correction and upscaler."""

from __future__ import annotations

from engine.option import Option
from engine.request import MAX_SEED, SAMPLER_PARAMETER_RANGES

SAMPLING = "Sampler parameters"
IMG2IMG = "img2img"


def _ranged(key: str, default: float, label: str, request_field: str | None = None) -> Option:
    low, high = SAMPLER_PARAMETER_RANGES[request_field or key]
    return Option(key, default, label, SAMPLING, minimum=low, maximum=high)


SAMPLING_OPTIONS: tuple[Option, ...] = (
    _ranged("eta_ancestral", 1.0, "Eta for ancestral samplers (Euler a, DPM2 a): how much fresh noise "
            "each step adds (1: the sampler's own amount, 0: none)", "eta"),
    _ranged("eta_ddim", 0.0, "Eta for DDIM (0: deterministic)", "eta"),
    _ranged("s_churn", 0.0, "Sigma churn: extra noise added before each step (Euler)"),
    _ranged("s_tmin", 0.0, "Sigma tmin: churn only at noise levels above this"),
    _ranged("s_tmax", 0.0, "Sigma tmax: churn only at noise levels below this (0: no limit)"),
    _ranged("s_noise", 1.0, "Sigma noise: scale of the noise the samplers add"),
    _ranged("s_min_uncond", 0.0, "Negative guidance minimum sigma: below it, every other step skips "
            "the negative prompt (faster; 0: never)"),
    Option("eta_noise_seed_delta", 0, "Eta noise seed delta (ENSD): the step noise of ancestral samplers "
           "comes from seed + this (31337 matches pictures made with NovelAI's settings)", SAMPLING,
           minimum=0, maximum=MAX_SEED),
    Option("always_discard_next_to_last_sigma", False, "Always discard the next-to-last sigma of the "
           "schedule (DPM2, DPM2 a and DPM++ 3M SDE do so anyway)", SAMPLING),
    Option("sgm_noise_multiplier", False, "SGM noise multiplier: scale the starting noise by "
           "sqrt(1 + sigma_max^2) rather than sigma_max, as SDXL's reference code does", SAMPLING),
    Option("sigma_min", 0.0, "Schedule min sigma (0: the model's own)", SAMPLING, minimum=0.0, maximum=100.0),
    Option("sigma_max", 0.0, "Schedule max sigma (0: the model's own)", SAMPLING, minimum=0.0, maximum=1000.0),
    Option("rho", 0.0, "Schedule rho of Karras and Polyexponential (0: the schedule's own, 7 and 1)", SAMPLING,
           minimum=0.0, maximum=100.0),
    Option("beta_dist_alpha", 0.6, "Beta schedule alpha", SAMPLING, minimum=0.01, maximum=1.0),
    Option("beta_dist_beta", 0.6, "Beta schedule beta", SAMPLING, minimum=0.01, maximum=1.0),
    Option("uni_pc_variant", "bh1", "UniPC variant", SAMPLING, choices=("bh1", "bh2", "vary_coeff")),
    Option("uni_pc_skip_type", "time_uniform", "UniPC skip type", SAMPLING,
           choices=("time_uniform", "time_quadratic", "logSNR")),
    Option("uni_pc_order", 3, "UniPC order (below the number of steps)", SAMPLING, minimum=1, maximum=50),
    Option("uni_pc_lower_order_final", True, "UniPC: lower order on the final step", SAMPLING),
)

IMG2IMG_OPTIONS: tuple[Option, ...] = (
    Option("img2img_fix_steps", False, "img2img runs exactly the sampling steps asked for (otherwise "
           "steps x denoising strength)", IMG2IMG),
    Option("img2img_extra_noise", 0.0, "Extra noise added to img2img and hires fix (multiplier of the "
           "noise; 0: none)", IMG2IMG, minimum=0.0, maximum=1.0),
    Option("img2img_color_correction", False, "Colour correction: match the colours of img2img results "
           "to the original picture", IMG2IMG),
    # A model upscaler's name, or "None" (Lanczos): checked against the upscalers on disk when used.
    Option("upscaler_for_img2img", "None", "Upscaler for img2img: enlarges a picture smaller than the "
           "chosen size before it is used", IMG2IMG),
)

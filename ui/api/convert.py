"""The one place an API body becomes a GenerationRequest, and a result becomes a response."""

from __future__ import annotations

import base64
import json
from typing import Any

from engine import infotext, samplers
from engine.errors import RequestError
from engine.generation import GenerationResult
from engine.outputs import png_bytes
from engine.request import GenerationRequest

from .models import Txt2ImgBody

# Fields whose features arrive in later versions: refused with a clear message when used, rather
# than silently producing something other than what was asked for.
_NOT_YET = {
    "restore_faces": "face restoration", "tiling": "tiling", "enable_hr": "hires fix",
    "script_name": "scripts", "alwayson_scripts": "always-on scripts",
    "refiner_checkpoint": "the SDXL refiner",
}

# Settings a request may override for itself, and the request field each one sets.
OVERRIDABLE = {"CLIP_stop_at_last_layers": "clip_skip", "emphasis": "emphasis", "sd_vae": "vae"}

_INFOTEXT_FIELDS = ("prompt", "negative_prompt", "steps", "sampler_name", "scheduler", "cfg_scale",
                    "seed", "subseed", "subseed_strength", "width", "height",
                    "seed_resize_from_w", "seed_resize_from_h", "clip_skip", "emphasis")


def _apply_infotext(body: Txt2ImgBody) -> dict[str, Any]:
    """Body fields, with those the caller did not give filled from `infotext`."""
    values = body.model_dump()
    if body.infotext:
        given = body.model_fields_set
        for name, value in infotext.request_fields(body.infotext).items():
            if name in _INFOTEXT_FIELDS and name not in given:
                values[name] = value
    return values


def txt2img_request(body: Txt2ImgBody) -> GenerationRequest:
    for name, feature in _NOT_YET.items():
        if getattr(body, name):
            raise RequestError(f"{name}: {feature} is not available in this version", name)
    values = _apply_infotext(body)
    overrides = _overrides(body.override_settings)
    sampler = values["sampler_name"] or values["sampler_index"] or samplers.API_DEFAULT_SAMPLER
    save = values["save_images"]
    fields = dict(
        mode="txt2img",
        prompt=values["prompt"], negative_prompt=values["negative_prompt"],
        seed=values["seed"], subseed=values["subseed"], subseed_strength=values["subseed_strength"],
        seed_resize_from_w=max(0, values["seed_resize_from_w"]),
        seed_resize_from_h=max(0, values["seed_resize_from_h"]),
        sampler_name=sampler, scheduler=values["scheduler"] or "Automatic",
        steps=values["steps"], cfg_scale=values["cfg_scale"],
        width=values["width"], height=values["height"],
        batch_size=values["batch_size"], n_iter=values["n_iter"],
        styles=tuple(values["styles"]),
        save_images=save and not values["do_not_save_samples"],
        save_grid=save and not values["do_not_save_grid"],
    )
    fields.update({k: values[k] for k in ("clip_skip", "emphasis") if k in values})  # from infotext
    fields.update(overrides)
    return GenerationRequest(**fields).validate()


def _overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """override_settings as request fields: they apply to this request only."""
    fields = {}
    for key, value in settings.items():
        if key not in OVERRIDABLE:
            raise RequestError(
                f"override_settings: '{key}' cannot be overridden per request in this version; "
                f"these can: {', '.join(OVERRIDABLE)}", "override_settings")
        fields[OVERRIDABLE[key]] = value
    return fields


def encode_png(image, text: str | None) -> str:
    return base64.b64encode(png_bytes(image, text)).decode("ascii")


def info_json(result: GenerationResult) -> str:
    request = result.request
    sampler, _ = samplers.resolve(request.sampler_name, request.scheduler)
    first = 1 if result.grid is not None else 0
    info = {
        "prompt": result.prompt,
        "all_prompts": [result.prompt] * len(result.images),
        "negative_prompt": result.negative_prompt,
        "all_negative_prompts": [result.negative_prompt] * len(result.images),
        "seed": result.seeds[0] if result.seeds else request.seed,
        "all_seeds": result.seeds,
        "subseed": result.subseeds[0] if result.subseeds else request.subseed,
        "all_subseeds": result.subseeds,
        "subseed_strength": request.subseed_strength,
        "width": request.width, "height": request.height,
        "sampler_name": sampler.name, "cfg_scale": request.cfg_scale, "steps": request.steps,
        "batch_size": request.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": result.model.model_name, "sd_model_hash": result.model.short_hash,
        "sd_vae_name": result.extra_params.get("VAE"), "sd_vae_hash": result.extra_params.get("VAE hash"),
        "seed_resize_from_w": request.seed_resize_from_w or -1,
        "seed_resize_from_h": request.seed_resize_from_h or -1,
        "denoising_strength": None, "extra_generation_params": dict(result.extra_params),
        "index_of_first_image": first, "infotexts": ([result.infotexts[0]] if first else [])
        + result.infotexts, "styles": list(request.styles), "job_timestamp": result.job_timestamp,
        "clip_skip": request.clip_skip, "is_using_inpainting_conditioning": False,
        "interrupted": result.interrupted, "warnings": result.warnings,
    }
    return json.dumps(info, ensure_ascii=False)


def images_response(result: GenerationResult, body: dict, send_images: bool) -> dict:
    images = []
    if send_images:
        images = [encode_png(image, text) for image, text in result.gallery()]
    return {"images": images, "parameters": body, "info": info_json(result)}

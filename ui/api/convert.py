"""The one place an API body becomes a GenerationRequest, and a result becomes a response."""

from __future__ import annotations

import base64
import json
from typing import Any

from engine.models.text_encoders import MODULES_KEY
from engine.sampling import samplers

from engine.output import infotext
from engine.errors import RequestError
from engine.extensions.registry import ExtensionRegistry
from engine.postprocess.extras import ExtrasRequest
from engine.postprocess.faces import FACE_DETAILER
from engine.job_results import GenerationResult
from engine.output.writer import png_bytes
from engine.request import (
    DEFAULT_REFINER_SWITCH_AT,
    SIZE_STEP,
    GenerationRequest,
    Img2ImgOptions,
    RefinerChoice,
    ScriptChoice,
)
from engine.runs.uploads import image_from_base64

from . import controlnet_api
from .models import Img2ImgBody, Txt2ImgBody

# Fields whose features arrive in later versions: refused with a clear message when used, rather
# than silently producing something other than what was asked for.
_NOT_YET = {"latent_mask": "a separate latent mask"}
# Selectable scripts client programs look for; "controlnet m2m" (the ControlNet extension's video
# script) is listed so they find ControlNet, but runs nothing here.
VIDEO_SCRIPTS = ("controlnet m2m",)


def field_info(field) -> dict:
    """One extension or script field as /script-info lists an argument."""
    return {"label": field.label, "value": field.default, "minimum": field.minimum, "maximum": field.maximum,
            "step": field.step, "choices": list(field.choices) or None}


def script_info(entry, mode: str) -> dict:
    """A script (selectable) or an always-on extension as /script-info lists it for a tab."""
    item = entry.extension
    fields = item.fields_for(mode) if entry.is_script else item.fields
    return {"name": item.title.lower(), "is_alwayson": not entry.is_script, "is_img2img": mode == "img2img",
            "args": [field_info(f) for f in fields]}

_INFOTEXT_FIELDS = ("prompt", "negative_prompt", "steps", "sampler_name", "scheduler", "cfg_scale",
                    "seed", "subseed", "subseed_strength", "width", "height",
                    "seed_resize_from_w", "seed_resize_from_h", "clip_skip", "emphasis",
                    "denoising_strength", "mask_blur", "inpainting_fill", "inpaint_full_res",
                    "inpaint_full_res_padding", "inpainting_mask_invert", "resize_mode", "randn_source",
                    "refiner_checkpoint", "refiner_switch_at", "cfg_rescale", "noise_schedule",
                    "distilled_cfg_scale", "shift")


def _apply_infotext(body: Txt2ImgBody) -> dict[str, Any]:
    """Body fields, with those the caller did not give filled from `infotext`."""
    values = body.model_dump()
    if body.infotext:
        given = body.model_fields_set
        for name, value in infotext.request_fields(body.infotext).items():
            if name in _INFOTEXT_FIELDS and name not in given:
                values[name] = value
    return values


def job_overrides(body) -> dict[str, Any]:
    """The body's override_settings, with the VAE / text encoder files its `infotext` names
    (Forge's Module N keys) when it does not set forge_additional_modules itself."""
    overrides = dict(body.override_settings or {})
    if body.infotext and MODULES_KEY not in overrides:
        modules = infotext.request_fields(body.infotext).get("modules")
        if modules:
            overrides[MODULES_KEY] = list(modules)
    return overrides


def txt2img_request(body: Txt2ImgBody, registry: ExtensionRegistry | None = None,
                    limit_megapixels: float = 16.0, default_refiner: str = "None") -> GenerationRequest:
    """`default_refiner`: the sd_model_refiner setting, for a body that names no refiner."""
    return GenerationRequest(**_common_fields(body, _apply_infotext(body), registry, limit_megapixels=limit_megapixels,
                                              default_refiner=default_refiner)).validate()


def img2img_request(body: Img2ImgBody, limit_megapixels: float,
                    registry: ExtensionRegistry | None = None, default_refiner: str = "None") -> GenerationRequest:
    values = _apply_infotext(body)
    fields = _common_fields(body, values, registry, "img2img", limit_megapixels=limit_megapixels,
                            default_refiner=default_refiner)
    mask_blur = values["mask_blur"] if values["mask_blur"] is not None else \
        max(values["mask_blur_x"], values["mask_blur_y"])
    part = Img2ImgOptions(
        init_images=tuple(image_from_base64(data, f"init_images[{i}]", limit_megapixels)
                          for i, data in enumerate(body.init_images)),
        mask=image_from_base64(body.mask, "mask", limit_megapixels) if body.mask else None,
        resize_mode=values["resize_mode"], denoising_strength=values["denoising_strength"],
        mask_blur=mask_blur, inpainting_fill=values["inpainting_fill"],
        inpaint_full_res=values["inpaint_full_res"],
        inpaint_full_res_padding=values["inpaint_full_res_padding"],
        inpainting_mask_invert=bool(values["inpainting_mask_invert"]),
        initial_noise_multiplier=values["initial_noise_multiplier"] or 1.0,
        image_cfg_scale=values["image_cfg_scale"],
    )
    fields.update(mode="img2img", img2img=part)
    return GenerationRequest(**fields).validate()


def _extension_options(body: Txt2ImgBody, registry: ExtensionRegistry | None) -> dict[str, dict]:
    """alwayson_scripts ({title: {"args": [...]}}, args by field order or by name) and the
    ecosystem's shortcut fields (tiling) as per-extension options."""
    options: dict[str, dict] = {}
    for title, payload in (body.alwayson_scripts or {}).items():
        if controlnet_api.is_controlnet_script(title):
            continue  # units, read by _common_fields
        entry = registry.find(title) if registry else None
        if entry is None:
            known = ", ".join(e.extension.title for e in registry.loaded()) if registry else "none"
            raise RequestError(f"alwayson_scripts: no extension called '{title}'. Installed: {known}",
                               "alwayson_scripts")
        args = payload.get("args", []) if isinstance(payload, dict) else payload
        fields = entry.extension.fields
        if isinstance(args, dict):
            options[entry.name] = dict(args)
        elif isinstance(args, list) and len(args) <= len(fields):
            options[entry.name] = {f.name: value for f, value in zip(fields, args)}
        else:
            raise RequestError(f"alwayson_scripts['{title}'].args: give at most {len(fields)} values "
                               f"({', '.join(f.name for f in fields)}) or an object", "alwayson_scripts")
    if body.tiling:
        options.setdefault("tiling", {})["enabled"] = True
    if body.restore_faces:
        options.setdefault("restore_faces", {})["enabled"] = True
    if getattr(body, "enable_hr", False) and not isinstance(body, Img2ImgBody):
        options.setdefault("hires_fix", {}).update(_hires_options(body))
    return options


def _hires_options(body: Txt2ImgBody) -> dict[str, Any]:
    """The ecosystem's hr_* fields as the hires-fix extension's options."""
    options: dict[str, Any] = {
        "enabled": True, "scale": body.hr_scale, "steps": body.hr_second_pass_steps,
        "resize_x": on_grid(body.hr_resize_x), "resize_y": on_grid(body.hr_resize_y),
        "denoising_strength": 0.7 if body.denoising_strength is None else body.denoising_strength,
        "prompt": body.hr_prompt or "", "negative_prompt": body.hr_negative_prompt or "",
    }
    if body.hr_upscaler:
        options["upscaler"] = body.hr_upscaler
    if body.hr_sampler_name:
        options["sampler"] = body.hr_sampler_name
    if body.hr_scheduler:
        options["scheduler"] = body.hr_scheduler
    if body.hr_checkpoint_name:
        options["checkpoint"] = body.hr_checkpoint_name
    return options


def on_grid(value: Any) -> Any:
    """A size the way the mature API takes it: any whole number, rounded down to the 8-pixel grid
    the model works on (the picture comes out that size). Anything else is left for validation
    to name."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= SIZE_STEP:
        return value - value % SIZE_STEP
    return value


def _seed_resize(value: Any) -> Any:
    """seed_resize_from_w/h: any positive size (rounded down to the grid); less than one latent
    pixel, zero or negative means off."""
    if isinstance(value, int) and not isinstance(value, bool):
        return on_grid(value) if value >= SIZE_STEP else 0
    return value


def _script_fields(name: str | None, args: list, mode: str, registry: ExtensionRegistry | None) -> dict:
    """script_name + script_args (positional, as the mature API takes them) as the request's
    script (its name and options)."""
    if not name:
        return {}
    if name.strip().lower() in VIDEO_SCRIPTS:
        raise RequestError(f"Script '{name}' works on videos, which this version does not do", "script_name")
    if registry is None:
        raise RequestError(f"Script '{name}' not found", "script_name")
    entry = registry.find_script(name, mode)
    return {"script": ScriptChoice(entry.name, entry.extension.options_from_args(args or [], mode))}


def refiner_choice(values: dict[str, Any], default: str = "None") -> RefinerChoice | None:
    """refiner_checkpoint and refiner_switch_at as the request's refiner: none for "" or "None",
    the `default` checkpoint (the sd_model_refiner setting) when the body leaves it out, and
    A1111's slider default (0.8) for a switch point left out."""
    checkpoint = values.get("refiner_checkpoint")
    if checkpoint is None:
        checkpoint = default
    if not isinstance(checkpoint, str) or checkpoint.strip() in ("", "None"):
        return None
    switch_at = values.get("refiner_switch_at")
    return RefinerChoice(checkpoint.strip(), DEFAULT_REFINER_SWITCH_AT if switch_at is None else switch_at)


def _common_fields(body: Txt2ImgBody, values: dict[str, Any], registry: ExtensionRegistry | None,
                   mode: str = "txt2img", limit_megapixels: float = 16.0, default_refiner: str = "None") -> dict:
    """The request fields txt2img and img2img bodies share."""
    for name, feature in _NOT_YET.items():
        if values.get(name):
            raise RequestError(f"{name}: {feature} is not available in this version", name)
    values = {**values, "width": on_grid(values["width"]), "height": on_grid(values["height"])}
    if getattr(body, "enable_hr", False) and body.firstphase_width > 0 and body.firstphase_height > 0:
        body = body.model_copy(update={"hr_resize_x": values["width"], "hr_resize_y": values["height"]})
        values = {**values, "width": on_grid(body.firstphase_width), "height": on_grid(body.firstphase_height)}
    sampler = values["sampler_name"] or values["sampler_index"] or samplers.API_DEFAULT_SAMPLER
    save = values["save_images"]
    fields = dict(
        mode="txt2img",
        prompt=values["prompt"], negative_prompt=values["negative_prompt"],
        seed=values["seed"], subseed=values["subseed"], subseed_strength=values["subseed_strength"],
        seed_resize_from_w=_seed_resize(values["seed_resize_from_w"]),
        seed_resize_from_h=_seed_resize(values["seed_resize_from_h"]),
        sampler_name=sampler, scheduler=values["scheduler"] or "Automatic",
        steps=values["steps"], cfg_scale=values["cfg_scale"],
        cfg_rescale=_first_given(values["rescale_cfg"], values["cfg_rescale"], 0.0),
        distilled_cfg_scale=values["distilled_cfg_scale"],   # None: the model's own (3.5, Fill 30)
        shift=values["shift"] or 0.0,
        width=values["width"], height=values["height"],
        batch_size=values["batch_size"], n_iter=values["n_iter"],
        styles=tuple(values["styles"]),
        save_images=save and not values["do_not_save_samples"],
        save_grid=save and not values["do_not_save_grid"],
        extensions=_extension_options(body, registry),
        controlnet_units=controlnet_api.units_from_scripts(body.alwayson_scripts, limit_megapixels),
        eta=values["eta"], s_churn=values["s_churn"], s_tmin=values["s_tmin"], s_tmax=values["s_tmax"],
        s_noise=values["s_noise"], s_min_uncond=values["s_min_uncond"],
        disable_extra_networks=bool(values["disable_extra_networks"]),
        **_script_fields(values.get("script_name"), values.get("script_args"), mode, registry),
        refiner=refiner_choice(values, default_refiner),
    )
    # From the infotext:
    fields.update({k: values[k] for k in ("clip_skip", "emphasis", "randn_source", "noise_schedule") if k in values})
    return fields


def _first_given(*values):
    return next(value for value in values if value is not None)


def encode_png(image, text: str | None) -> str:
    return base64.b64encode(png_bytes(image, text)).decode("ascii")


def info_json(result: GenerationResult) -> str:
    request = result.request
    sampler, _ = samplers.resolve(request.sampler_name, request.scheduler)
    first = 1 if result.grid is not None else 0
    restoring = request.extensions.get("restore_faces", {})
    faces = restoring.get("restorer", FACE_DETAILER) if restoring.get("enabled") else None
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
        "batch_size": request.batch_size, "restore_faces": faces is not None,
        "face_restoration_model": faces,
        "sd_model_name": result.model.model_name, "sd_model_hash": result.model.short_hash,
        "sd_vae_name": result.extra_params.get("VAE"), "sd_vae_hash": result.extra_params.get("VAE hash"),
        "seed_resize_from_w": request.seed_resize_from_w or -1,
        "seed_resize_from_h": request.seed_resize_from_h or -1,
        "denoising_strength": request.img2img.denoising_strength if request.img2img is not None else None,
        "extra_generation_params": dict(result.extra_params),
        "index_of_first_image": first, "infotexts": ([result.grid_text] if first else [])
        + result.infotexts, "styles": list(request.styles), "job_timestamp": result.job_timestamp,
        "clip_skip": request.clip_skip, "is_using_inpainting_conditioning": result.inpainting_model,
        "interrupted": result.interrupted, "warnings": result.warnings,
        "ignored_settings": result.ignored_settings,
    }
    return json.dumps(info, ensure_ascii=False)


def extras_request(body, image) -> ExtrasRequest:
    """An extra-single-image / extra-batch-images body as the request for one picture."""
    if body.resize_mode not in (0, 1):
        raise RequestError(f"resize_mode must be 0 (scale by) or 1 (scale to), got {body.resize_mode}",
                           "resize_mode")
    size = {"width": body.upscaling_resize_w, "height": body.upscaling_resize_h, "crop": body.upscaling_crop} \
        if body.resize_mode == 1 else {"scale": body.upscaling_resize}
    return ExtrasRequest(image, upscaler=body.upscaler_1, upscaler_2=body.upscaler_2,
                         upscaler_2_visibility=body.extras_upscaler_2_visibility,
                         gfpgan_visibility=body.gfpgan_visibility, codeformer_visibility=body.codeformer_visibility,
                         codeformer_weight=body.codeformer_weight, **size)


def png_info(image) -> dict[str, Any]:
    """What /png-info answers: the infotext, the image's other text, and the fields read out."""
    from engine.output.writer import read_infotext

    text = read_infotext(image) or ""
    items = {key: value for key, value in image.info.items()
             if key != infotext.INFOTEXT_KEY and isinstance(value, (str, int, float))}
    return {"info": text, "items": items, "parameters": infotext.fields_table(text) if text else {}}


def images_response(result: GenerationResult, body: dict, send_images: bool) -> dict:
    images = []
    if send_images:  # enable_pnginfo off: the pictures go without their infotext (info has it)
        images = [encode_png(image, text if result.pnginfo else None) for image, text in result.gallery()]
    return {"images": images, "parameters": body, "info": info_json(result)}

"""The /sdapi/v1 routes. They share the engine, and its one GPU lane, with the browser UI."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request

from engine.models.text_encoders import MODULES_KEY
from engine.sampling import samplers
from engine.errors import RequestError
from engine.models.family_labels import FamilyLabels
from engine.postprocess.extras import UPSCALERS
from engine.postprocess.face_models import KINDS
from engine.postprocess.faces import restorers
from engine.settings.flags import public_dict
from engine.request import LATENT_UPSCALE_MODES
from engine.runs.uploads import image_from_base64
from engine.merge.merge_request import MergeRequest

from ..context import UIContext
from . import convert
from .model_downloads import with_downloads
from .models import (
    ErrorResponse,
    ExtrasBatchBody,
    ExtrasSingleBody,
    ImagesResponse,
    Img2ImgBody,
    MergeBody,
    MergeResponse,
    PngInfoBody,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    Txt2ImgBody,
    UpscalerItem,
)

# 409: a standard model is not downloaded (and auto_download_models is off); 429: the queue is
# full (--queue-size); 502: downloading a model failed; 503: no checkpoint loaded; 507: the job
# ran out of memory.
ERRORS = {status: {"model": ErrorResponse} for status in (400, 409, 422, 429, 502, 503, 507)}


def api_owner(request: Request) -> str:
    """Who a job belongs to: the authenticated user, else the client's address."""
    user = getattr(request.state, "api_user", None)
    return f"api:{user}" if user else f"api:{request.client.host if request.client else ''}"


def build_router(ctx: UIContext, auth_dependency) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(auth_dependency)], tags=["sdapi"])
    engine, settings, registry = ctx.engine, ctx.settings, ctx.registry
    family_labels = FamilyLabels()   # each checkpoint's family, read once per file signature

    def _default_refiner(body) -> str:
        """The sd_model_refiner setting as the job will see it (its override_settings included)."""
        overrides = body.override_settings or {}
        chosen = overrides.get("sd_model_refiner", settings["sd_model_refiner"])
        return chosen if isinstance(chosen, str) else "None"

    @router.post("/txt2img", response_model=ImagesResponse, responses=ERRORS)
    def txt2img(body: Txt2ImgBody, request: Request) -> dict:
        generation = convert.txt2img_request(body, engine.addons.extensions, settings["upload_max_megapixels"],
                                             _default_refiner(body))
        return _generate(generation, body, request, body.model_dump())

    @router.post("/img2img", response_model=ImagesResponse, responses=ERRORS)
    def img2img(body: Img2ImgBody, request: Request) -> dict:
        generation = convert.img2img_request(body, settings["upload_max_megapixels"], engine.addons.extensions,
                                             _default_refiner(body))
        echo = body.model_dump()
        if not body.include_init_images:  # as in the mature API: do not echo big uploads back
            echo.update(init_images=None, mask=None)
        return _generate(generation, body, request, echo)

    def _generate(generation, body, request: Request, echo: dict) -> dict:
        # As in the mature API, a grid is made (and returned first) only when it is also saved.
        def run():
            job = engine.submit(generation, owner=api_owner(request), job_id=body.force_task_id,
                                make_grid=generation.save_grid, overrides=convert.job_overrides(body),
                                restore_overrides=body.override_settings_restore_afterwards)
            return job.outcome()

        return convert.images_response(with_downloads(engine, settings, run), echo, body.send_images)

    @router.post("/extra-single-image", responses=ERRORS)
    def extra_single_image(body: ExtrasSingleBody, request: Request) -> dict:
        image = image_from_base64(body.image, "image", settings["upload_max_megapixels"])
        result = _extras(body, image, request)
        return {"html_info": result.extras, "image": convert.encode_png(result.image, result.infotext)}

    @router.post("/extra-batch-images", responses=ERRORS)
    def extra_batch_images(body: ExtrasBatchBody, request: Request) -> dict:
        if not body.imageList:
            raise RequestError("imageList is empty: send [{data: base64, name}, ...]", "imageList")
        limit = settings["upload_max_megapixels"]
        images = [image_from_base64(item.data, f"imageList[{i}]", limit) for i, item in enumerate(body.imageList)]
        results = [_extras(body, image, request) for image in images]
        return {"html_info": results[0].extras,
                "images": [convert.encode_png(r.image, r.infotext) for r in results]}

    def _extras(body, image, request: Request):
        extras = convert.extras_request(body, image)
        return with_downloads(engine, settings, lambda: engine.extras(extras, owner=api_owner(request)).outcome())

    @router.get("/scripts")
    def scripts() -> dict:
        """Per tab, the names of the selectable scripts and the always-on extensions (lower-case
        titles, as the mature API lists them), then the ControlNet extension's "controlnet" and
        "controlnet m2m", which client programs look for before sending units."""
        registry = engine.addons.extensions

        def names(mode: str) -> list[str]:
            return [entry.extension.title.lower() for entry in registry.scripts(mode) + registry.for_mode(mode)]
        controlnet = ["controlnet", *convert.VIDEO_SCRIPTS]
        return {"txt2img": names("txt2img") + controlnet, "img2img": names("img2img") + controlnet}

    @router.get("/script-info")
    def script_info() -> list[dict]:
        registry = engine.addons.extensions
        info = []
        for mode in ("txt2img", "img2img"):
            info += [convert.script_info(entry, mode) for entry in registry.scripts(mode)]
        info += [{"name": "controlnet", "is_alwayson": True, "is_img2img": img2img,
                  "args": [{"label": f"ControlNet Unit {i}", "value": None} for i in range(3)]}
                 for img2img in (False, True)]
        for mode in ("txt2img", "img2img"):
            info += [convert.script_info(entry, mode) for entry in registry.for_mode(mode)]
        return info

    @router.get("/face-restorers")
    def face_restorers() -> list[dict]:
        library = engine.addons.faces
        return [{"name": r.name, "cmd_dir": str(library.folder(r.name)) if r.name in KINDS else None,
                 "available": r.available, "reason": r.reason or None} for r in restorers(library)]

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> list[dict]:
        """As the mature API lists them (scale 4 unless the model says otherwise), standard
        models included before they are downloaded: model_path is then their URL, as there."""
        listed = [{"name": name, "model_name": None, "model_path": None, "model_url": None,
                   "scale": 4} for name in UPSCALERS]
        return listed + [{"name": u.name, "model_name": u.family, "model_path": u.path.name if u.path else u.url,
                          "model_url": u.url, "scale": u.scale} for u in engine.addons.upscalers.describe()]

    @router.get("/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict]:
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.get("/realesrgan-models")
    def realesrgan_models() -> list[dict]:
        """The Real-ESRGAN models there are, downloaded or not, with where they are published."""
        library = engine.addons.upscalers
        return [{"name": entry.name, "path": library.catalogue.url(entry), "scale": entry.scale}
                for entry in library.standard() if entry.folder == "RealESRGAN"]

    @router.post("/png-info", response_model=PngInfoResponse, responses=ERRORS)
    def png_info(body: PngInfoBody) -> dict:
        image = image_from_base64(body.image, "image", settings["upload_max_megapixels"])
        return convert.png_info(image)

    @router.get("/workers")
    def workers() -> list[dict]:
        """The lanes that make pictures: this studio's GPU(s) and the cluster's workers, with
        their device, loaded checkpoint and state (docs/cluster.md)."""
        return engine.workers()

    @router.get("/progress", response_model=ProgressResponse)
    def progress(request: Request, skip_current_image: bool = False, id_task: str | None = None) -> dict:
        """The caller's generation (`id_task` names one), else the running one; only the caller's
        own job comes with its live preview."""
        owner = api_owner(request)
        job = engine.job_to_watch(owner)
        if id_task:
            own = [mine for mine in engine.generations_of(owner) if mine.id == id_task]
            job = own[0] if own else engine.queue.find(id_task)
        if job is None or job.kind != "generate":
            return ProgressResponse(progress=0, eta_relative=0, state=ProgressState(
                job_count=engine.queue.queued_count())).model_dump()
        return _progress_of(job, job.owner == owner and not skip_current_image)

    def _progress_of(job, with_preview: bool) -> dict:
        snap = job.snapshot()
        image = convert.encode_png(job.preview, None) if with_preview and job.preview is not None else None
        textinfo = snap.textinfo or None
        place = engine.queue.position(job)
        if place is not None:
            textinfo = f"In queue: {place[0]} of {place[1]}"
        state = ProgressState(
            skipped=job.skipped, interrupted=job.interrupted, job=job.id,
            job_count=len(engine.queue.running()) + engine.queue.queued_count(),
            job_no=snap.batch_index, sampling_step=snap.step, sampling_steps=snap.total_steps,
            job_timestamp=str(int(job.created_at)))
        return {"progress": snap.fraction, "eta_relative": snap.eta or 0.0, "state": state.model_dump(),
                "current_image": image, "textinfo": textinfo, "current_task": job.id,
                "queue_position": place[0] if place else None}

    @router.post("/interrupt")
    def interrupt(request: Request) -> None:
        """Stop the caller's own generations, running or waiting; nobody else's."""
        engine.interrupt(api_owner(request))

    @router.post("/skip")
    def skip(request: Request) -> None:
        engine.skip(api_owner(request))

    @router.get("/samplers", response_model=list[SamplerItem])
    def sampler_list() -> list[dict]:
        return samplers.api_sampler_list()

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def scheduler_list() -> list[dict]:
        return samplers.api_schedule_list()

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models() -> list[dict]:
        return [{"title": c.title, "model_name": c.model_name, "hash": c.short_hash,
                 "sha256": c.sha256, "filename": c.path or c.name, "config": None,
                 "family": family_labels.of(c)}
                for c in registry.checkpoints]

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        registry.refresh()

    @router.post("/merge-checkpoints", response_model=MergeResponse, responses={**ERRORS, 409: ERRORS[400]})
    def merge_checkpoints(body: MergeBody) -> dict:
        """A1111's Checkpoint Merger: a new .safetensors file in the checkpoints folder, listed at
        once. One merge at a time (409 while another runs); it runs beside generations."""
        result = engine.merge_checkpoints(MergeRequest(**body.model_dump()))
        return {"filename": str(result.path), "title": result.checkpoint.title,
                "hash": result.checkpoint.short_hash, "info": result.info}

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        return settings.api_dict()

    @router.post("/options", responses={**ERRORS, 403: ERRORS[400]})
    def set_options(request: Request, changes: dict[str, Any] = Body(...)) -> dict | None:
        """Set the given settings and keep them. Keys of settings this app does not have (other
        web UIs' and extensions') are accepted and named in the answer as ignored."""
        known, ignored = settings.known(changes)
        wanted = known.pop("sd_model_checkpoint", None)
        if wanted is not None and not isinstance(wanted, str):
            raise RequestError("sd_model_checkpoint must be text", "sd_model_checkpoint")
        # A checkpoint switch is a choice of model, not a change of settings: --freeze-settings
        # leaves it possible. A value sent back unchanged (a client returning what GET gave it)
        # is no change either.
        settings.check_editable(settings.changed_keys(known))
        settings.validate(known)  # refuse the whole change if any value is bad
        if "sd_vae" in known:
            engine.addons.vaes.check_choice(known["sd_vae"])
        modules = known.get(MODULES_KEY)
        if wanted or (modules is not None and engine.models.current is not None):
            # Forge's forge_additional_modules: the VAE / text encoder files the checkpoint loads with.
            target = wanted or engine.models.current.info.title
            engine.load_checkpoint(target, owner=api_owner(request), modules=modules).outcome()
        if known:
            settings.update(known)
        if ignored:
            return {"ignored": ignored, "detail": "Settings this app does not have were ignored: "
                    + ", ".join(ignored)}
        return None

    addons = engine.addons

    @router.get("/loras")
    def loras() -> list[dict]:
        """As A1111 answers: each file's name, alias, path and the safetensors header's metadata
        (its JSON-valued ss_* keys decoded), read from the header only and remembered per file."""
        metadata = {str(entry.path): entry.metadata for entry in addons.networks.entries("lora")}
        return [{"name": lora.name, "alias": lora.alias, "path": lora.path, "metadata": metadata.get(lora.path, {})}
                for lora in addons.loras.files]

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        addons.loras.refresh()

    @router.get("/embeddings")
    def embeddings() -> dict:
        return addons.embeddings.api_listing(engine.models.current)

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        addons.embeddings.refresh()

    @router.get("/prompt-styles")
    def prompt_styles() -> list[dict]:
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in addons.styles.styles()]

    @router.get("/sd-vae")
    def sd_vae() -> list[dict]:
        return [{"model_name": v.name, "filename": v.path} for v in addons.vaes.files]

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        addons.vaes.refresh()

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        return public_dict(ctx.flags)

    return router

"""The /internal routes of the AUTOMATIC1111 web UI that its page and some client programs call:
ping, a job's progress by its id, the waiting jobs, and the system information. They sit behind
the same access guard as everything else (ui/access.py)."""

from __future__ import annotations

import base64
import io
import json
import platform
import sys
import time
from importlib import metadata
from typing import Any

import psutil
import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from engine.settings.flags import SECRET_FLAGS
from engine.version import VERSION

from ..access import basic_credentials
from ..context import UIContext
from .models import Name
from .routes import api_owner

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "gradio", "fastapi",
            "numpy", "pillow", "peft")


class InternalProgressRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id_task: Name | None = Field(default=None, description="the job's id (force_task_id)")
    id_live_preview: int = Field(default=-1, description="id of the last preview received")
    live_preview: bool = Field(default=True, description="whether to send the live preview")


class InternalProgressResponse(BaseModel):
    active: bool
    queued: bool
    completed: bool
    progress: float | None = None
    eta: float | None = None
    live_preview: str | None = Field(default=None, description="a data: URL")
    id_live_preview: int | None = None
    textinfo: str | None = None


def _caller(request: Request) -> None:
    """The API user an /internal request comes as (the access guard has checked the login), so
    that it is the same owner as for /sdapi/v1."""
    login = basic_credentials(dict(request.scope.get("headers") or []))
    if login is not None:
        request.state.api_user = login[0]


def build_router(ctx: UIContext) -> APIRouter:
    router = APIRouter(prefix="/internal", tags=["internal"], dependencies=[Depends(_caller)])
    engine = ctx.engine

    @router.get("/ping")
    def ping() -> dict:
        return {}

    @router.post("/progress", response_model=InternalProgressResponse)
    def progress(body: InternalProgressRequest, request: Request) -> dict:
        """A job's progress by its id; the live preview only to whoever asked for the job."""
        job = engine.queue.find(body.id_task) if body.id_task else None
        completed = bool(body.id_task) and engine.queue.finished(body.id_task)
        if job is None or job.state != "running":
            place = engine.queue.position(job) if job is not None else None
            text = f"In queue: {place[0]}/{place[1]}" if place else "Waiting..."
            return {"active": False, "queued": place is not None, "completed": completed,
                    "id_live_preview": -1, "textinfo": text}
        snap = job.snapshot()
        answer: dict[str, Any] = {"active": True, "queued": False, "completed": False,
                                  "progress": snap.fraction, "eta": snap.eta,
                                  "id_live_preview": body.id_live_preview,
                                  "textinfo": snap.textinfo or None}
        mine = job.owner == api_owner(request)
        if body.live_preview and mine and job.preview_id != body.id_live_preview:
            image = job.preview
            if image is not None:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                answer["live_preview"] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
                answer["id_live_preview"] = job.preview_id
        return answer

    @router.get("/pending-tasks")
    def pending_tasks() -> dict:
        """How many jobs wait; their ids only to whoever asked for them."""
        return {"size": engine.queue.queued_count()}

    @router.get("/sysinfo")
    def sysinfo(attachment: bool = False) -> Response:
        text = json.dumps(system_info(ctx), indent=4, ensure_ascii=False, default=str)
        headers = {"Content-Disposition": f'attachment; filename="sysinfo-{time.strftime("%Y-%m-%d-%H-%M")}.json"'} \
            if attachment else {}
        return Response(text, media_type="application/json", headers=headers)

    @router.get("/sysinfo-download")
    def sysinfo_download() -> Response:
        return sysinfo(attachment=True)

    return router


def system_info(ctx: UIContext) -> dict[str, Any]:
    """What a bug report needs: versions, the machine, the flags and settings, with every secret
    (logins, tokens) left out."""
    flags = {key: ("<hidden>" if key in SECRET_FLAGS and value else value)
             for key, value in vars(ctx.flags).items()}
    memory = psutil.virtual_memory()
    current = ctx.engine.models.current
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "Platform": platform.platform(),
        "Python": sys.version.split()[0],
        "Version": VERSION,
        "Commandline": redacted(sys.argv, secret_values(ctx.flags)),
        "Torch env info": {"torch_version": torch.__version__, "cuda_available": torch.cuda.is_available(),
                           "cuda_version": torch.version.cuda,
                           "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
        "Device": {"device": str(ctx.engine.models.device.device),
                   "dtype": str(ctx.engine.models.device.dtype).replace("torch.", "")},
        "CPU": {"model": platform.processor(), "count logical": psutil.cpu_count(),
                "count physical": psutil.cpu_count(logical=False)},
        "RAM": {"total": memory.total, "used": memory.total - memory.available, "free": memory.available},
        "Checkpoint": current.info.title if current else None,
        "Extensions": [{"name": e.name, "builtin": e.builtin, "enabled": e.enabled and not e.error,
                        "error": e.error} for e in ctx.engine.addons.extensions.entries],
        "Flags": flags,
        "Config": ctx.settings.as_dict(),
        "Packages": packages,
    }


def secret_values(flags) -> list[str]:
    """The passwords and tokens the flags hold (however the flag was spelt on the command line)."""
    found = []
    for key in SECRET_FLAGS:
        value = getattr(flags, key, None)
        if isinstance(value, list):
            found += [password for _, password in value]
        elif isinstance(value, str) and key != "gradio_auth_path":
            found.append(value)
    return [value for value in found if value]


def redacted(argv: list[str], secrets: list[str] = ()) -> list[str]:
    """The command line with the values of secret flags (--gradio-auth user:pass, ...) hidden, and
    any argument holding one of `secrets` (a flag may be abbreviated: --api-au)."""
    secret = {"--" + key.replace("_", "-") for key in SECRET_FLAGS}
    shown, hide_next = [], False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if hide_next or any(value in arg for value in secrets):
            shown.append("<hidden>")
            hide_next = False
        elif name in secret:
            shown.append(f"{name}=<hidden>" if "=" in arg else arg)
            hide_next = "=" not in arg
        else:
            shown.append(arg)
    return shown

"""The /sdapi/v1 routes about the server itself rather than one image: memory, extensions,
hypernetworks, loading and unloading the checkpoint, captioning."""

from __future__ import annotations

from typing import Any

import psutil
import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from engine.errors import NoModelError
from engine.postprocess.interrogate import INTERROGATORS
from engine.runs.uploads import image_from_base64

from ..context import UIContext
from .models import InterrogateBody
from .routes import ERRORS, api_owner


def memory_report() -> dict[str, Any]:
    """RAM of the machine and of this process, and CUDA memory when there is a GPU, in bytes,
    with the keys client programs read."""
    ram = psutil.virtual_memory()
    report: dict[str, Any] = {"ram": {"free": ram.available, "used": ram.total - ram.available,
                                      "total": ram.total, "process": psutil.Process().memory_info().rss}}
    if not torch.cuda.is_available():
        report["cuda"] = {"error": "no CUDA device"}
        return report
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()

    def figures(name: str) -> dict[str, int]:
        return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

    report["cuda"] = {
        "system": {"free": free, "used": total - free, "total": total},
        "active": figures("active_bytes"), "allocated": figures("allocated_bytes"),
        "reserved": figures("reserved_bytes"), "inactive": figures("inactive_split_bytes"),
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }
    return report


def build_router(ctx: UIContext, auth_dependency) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(auth_dependency)], tags=["sdapi"])
    engine, settings = ctx.engine, ctx.settings
    captioner = engine.captioner

    @router.get("/memory")
    def memory() -> dict[str, Any]:
        return memory_report()

    @router.get("/extensions")
    def extensions() -> list[dict[str, Any]]:
        return [{"name": entry.name, "remote": None, "branch": None, "commit_hash": None,
                 "commit_date": None, "version": getattr(entry.extension, "version", None),
                 "enabled": entry.enabled and not entry.error, "builtin": entry.builtin,
                 "status": entry.status, "error": entry.error}
                for entry in engine.addons.extensions.entries]

    @router.get("/hypernetworks")
    def hypernetworks() -> list[dict[str, Any]]:
        """Hypernetworks are not supported (LoRA replaced them); the route answers, empty, for the
        client programs that ask."""
        return []

    @router.post("/unload-checkpoint", responses=ERRORS)
    def unload_checkpoint(request: Request) -> None:
        engine.unload_checkpoint(owner=api_owner(request)).outcome()

    @router.post("/reload-checkpoint", responses=ERRORS)
    def reload_checkpoint(request: Request) -> None:
        """Load the chosen checkpoint again after unload-checkpoint (a no-op when it is loaded)."""
        wanted = settings["sd_model_checkpoint"] or engine.initial_checkpoint(None)
        if not wanted:
            raise NoModelError("No checkpoint to load: put a model in models/Stable-diffusion")
        engine.load_checkpoint(wanted, owner=api_owner(request)).outcome()

    @router.post("/interrogate", responses={**ERRORS, 404: ERRORS[400]})
    def interrogate(body: InterrogateBody) -> dict[str, str]:
        image = image_from_base64(body.image, "image", settings["upload_max_megapixels"])
        return {"caption": captioner.caption(image, body.model, engine.queue)}

    if getattr(ctx.flags, "api_server_stop", False):
        # Only with --api-server-stop, as in the web UI whose client programs call these.
        @router.post("/server-stop")
        def server_stop() -> PlainTextResponse:
            """End the server gracefully (the job running finishes its step first)."""
            ctx.control.stop()
            return PlainTextResponse("Stopping.")

        @router.post("/server-restart")
        def server_restart() -> PlainTextResponse:
            """Stop, then start again with the same command line."""
            ctx.control.restart()
            return PlainTextResponse("Restarting.")

        @router.post("/server-kill")
        def server_kill() -> PlainTextResponse:
            """End the process at once, whatever runs."""
            ctx.control.kill()
            return PlainTextResponse("Killing.")

    @router.get("/interrogators")
    def interrogators() -> list[dict[str, Any]]:
        return [{"name": name, **captioner.availability(name)} for name in INTERROGATORS]

    return router

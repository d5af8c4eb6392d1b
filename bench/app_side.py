"""Side (b): this app, built by its own composition root (app.build) on a temporary data folder
whose models/Stable-diffusion holds the checkpoint, which the registry finds and loads like any
user's file. Jobs go through Engine.submit as a click in the UI sends them; the API is the real
server (ui.server.create_server under uvicorn) on 127.0.0.1.

The API server runs in this process, on the same engine object, rather than as a second process:
the difference between calling the engine and calling the API is then exactly the HTTP, JSON and
PNG work the API adds. A second process would hold a second copy of the model (a full-size one
does not fit twice in a small machine) and its timings would differ for reasons of its own.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from engine.request import GenerationRequest

from .plain import Job


def build_app(data_dir: Path, checkpoint: Path, device: str, config_root: Path | None = None,
              api: bool = False):
    """The app's context with the checkpoint loaded, as `python app.py --ckpt <file>` makes it."""
    import app
    from engine.settings.flags import parse

    argv = ["--data-dir", str(data_dir), "--ckpt", str(checkpoint)]
    argv += ["--use-cpu", "all"] if device == "cpu" else []
    argv += ["--api"] if api else []
    ctx = app.build(parse(argv, environ={}), config_root=config_root)
    loading = ctx.engine.pending_load()
    if loading is not None:
        loading.outcome()  # raises what the load raised
    ctx.engine.models.require()
    return ctx


def click_request(job: Job) -> GenerationRequest:
    """What the txt2img tab sends for this job with its other fields at their defaults."""
    return GenerationRequest(prompt=job.prompt, negative_prompt=job.negative_prompt, seed=job.seed,
                             width=job.width, height=job.height, steps=job.steps,
                             cfg_scale=job.cfg_scale, sampler_name=job.sampler,
                             distilled_cfg_scale=job.distilled_cfg_scale)


def run_engine(engine, request: GenerationRequest, make_grid: bool = True):
    """One job through the engine's front door; returns the image and the wall time."""
    started = time.perf_counter()
    result = engine.submit(request, make_grid=make_grid).outcome()
    return result.images[0], time.perf_counter() - started


def api_body(job: Job) -> dict:
    return {"prompt": job.prompt, "negative_prompt": job.negative_prompt, "seed": job.seed,
            "width": job.width, "height": job.height, "steps": job.steps, "cfg_scale": job.cfg_scale,
            "sampler_name": job.sampler, "distilled_cfg_scale": job.distilled_cfg_scale, "batch_size": 1,
            "n_iter": 1}


def api_request_for_engine(ctx, body: dict) -> GenerationRequest:
    """The request the API route makes of `body`, for calling the engine with it directly."""
    from ui.api import convert
    from ui.api.models import Txt2ImgBody

    return convert.txt2img_request(Txt2ImgBody(**body), ctx.engine.addons.extensions,
                                   ctx.settings["upload_max_megapixels"])


class ApiServer:
    """ui.server.create_server(ctx) under uvicorn on 127.0.0.1, in a thread of this process."""

    def __init__(self, ctx):
        import uvicorn

        from ui.server import create_server

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(create_server(ctx), host="127.0.0.1", port=self.port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="bench-api", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ApiServer":
        self.thread.start()
        deadline = time.time() + 120
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run_api(client, url: str, body: dict):
    """One POST /sdapi/v1/txt2img; returns the decoded image and the wall time to the response."""
    import base64
    import io

    from PIL import Image

    started = time.perf_counter()
    response = client.post(f"{url}/sdapi/v1/txt2img", json=body)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    image.load()
    return image, seconds

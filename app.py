"""Start the web UI: parse flags, build the long-lived objects, serve.

This is the composition root: it is the only place that creates the settings, the model registry,
the engine and the server, and hands each what it needs.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
import warnings
import webbrowser
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
log = logging.getLogger("sd-studio")


def build(flags, config_root: Path | None = None):
    """Everything the server needs, from parsed flags. `config_root`: other model config folders
    than the repo's (the benchmark's tiny mode)."""
    from engine import memory_guard
    from engine.addons import AddOns
    from engine.checkpoint_cache import CheckpointCache
    from engine.devices import DeviceConfig
    from engine.downloads import ModelDownloader, sd15_offer
    from engine.engine import Engine
    from engine.flags import memory_mode, uses_cpu
    from engine.jobs import JobQueue
    from engine.models import BUILTIN_DEMO, HashCache, ModelRegistry
    from engine.outputs import OutputWriter, remove_unfinished
    from engine.pipelines import ModelManager
    from engine.settings import Settings
    from ui.context import UIContext

    memory_guard.inject_from_env(os.environ.get(memory_guard.FAULTS_ENV))  # set by tests only
    data_dir = Path(flags.data_dir).resolve() if flags.data_dir else APP_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir / "config.json")
    if memory_mode(flags):  # the flag sets the setting, which Settings can change while running
        settings.update({"memory_mode": memory_mode(flags)})
    checkpoint_dir = data_dir / "models" / "Stable-diffusion"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    folders = [checkpoint_dir] + ([Path(flags.ckpt_dir)] if flags.ckpt_dir else [])
    explicit = [Path(flags.ckpt)] if flags.ckpt and Path(flags.ckpt).is_file() else []
    hashes = HashCache(data_dir / "cache.json")
    registry = ModelRegistry(folders, hashes, explicit, include_demo=flags.demo)
    device = DeviceConfig.choose(use_cpu=uses_cpu(flags), no_half=flags.no_half)
    models = ModelManager(registry, device, allow_unsafe=flags.allow_unsafe_checkpoints,
                          cache=CheckpointCache(lambda: settings["sd_checkpoint_cache"]),
                          memory_mode=lambda: settings["memory_mode"],
                          **({"config_root": config_root} if config_root else {}))
    # A crash mid-write leaves a temporary file beside the whole old one: tidy those away.
    if remove_unfinished(data_dir / "outputs") + remove_unfinished(data_dir, recursive=False):
        log.info("removed the temporary files of writes a crash cut short")
    engine = Engine(models, OutputWriter(data_dir / "outputs", settings), settings,
                    AddOns.in_data_dir(data_dir, hashes, device=device,
                                       allow_unsafe=flags.allow_unsafe_checkpoints),
                    queue=JobQueue(max_waiting=flags.queue_size))
    if flags.demo:
        from engine.controlnet.demo import ensure_demo_controlnet
        ensure_demo_controlnet(engine.addons.controlnets.folder)
        engine.addons.controlnets.refresh()
    from engine.controlnet import annotators
    annotators.use_device(str(device.device))
    downloader = ModelDownloader(sd15_offer(os.environ.get("HF_ENDPOINT")), checkpoint_dir)
    ctx = UIContext(engine, registry, settings, flags, downloader)

    wanted = flags.ckpt or (BUILTIN_DEMO if flags.demo else None)
    first = engine.initial_checkpoint(str(Path(flags.ckpt).resolve()) if explicit else wanted)
    if first:
        engine.load_checkpoint(first)  # on the GPU lane; the page is served meanwhile
    else:
        log.warning("No checkpoint found in %s. Put a .safetensors model there, or start with --demo.",
                    checkpoint_dir)
    log.info("device: %s, %s", device.name, str(device.dtype).replace("torch.", ""))
    if settings.load_warning:
        log.warning(settings.load_warning)
    return ctx


def lan_addresses() -> list[str]:
    """IPv4 addresses other machines on the LAN can reach this one at."""
    found: set[str] = set()
    try:
        # Connecting a UDP socket sends nothing; it only picks the outgoing interface.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            found.add(probe.getsockname()[0])
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(info[4][0])
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127.") and a != "0.0.0.0")


def announce(flags, scheme: str) -> str:
    local = f"{scheme}://127.0.0.1:{flags.port}/"
    print(f"Running on local URL:  {local}", flush=True)
    if flags.listen:
        for address in lan_addresses():
            print(f"On your network:       {scheme}://{address}:{flags.port}/", flush=True)
        if not flags.gradio_auth:
            print("Warning: listening on the network without --gradio-auth: anyone on your network "
                  "can use this UI.", flush=True)
    if flags.api:
        print(f"API docs:              {local}docs", flush=True)
    return local


def open_share_link(port: int) -> None:
    from gradio import networking

    try:
        url = networking.setup_tunnel("127.0.0.1", port, secrets.token_urlsafe(32), None, None)
        print(f"Running on public URL: {url}", flush=True)
    except Exception as error:  # no network, or the share service refused: the app keeps running
        print(f"Could not create a share link: the share server could not be reached ({error}). "
              "The UI is still served on this machine and, with --listen, on your network.", flush=True)


def serve(ctx) -> None:
    import uvicorn

    from ui.server import create_server

    flags = ctx.flags
    app = create_server(ctx)
    host = "0.0.0.0" if flags.listen else "127.0.0.1"
    scheme = "https" if flags.tls_certfile else "http"
    config = uvicorn.Config(app, host=host, port=flags.port, log_level="warning",
                            ssl_keyfile=flags.tls_keyfile, ssl_certfile=flags.tls_certfile,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)

    def after_start() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if not server.started:
            return
        local = announce(flags, scheme)
        if flags.share:
            if not flags.gradio_auth:
                print("Warning: --share without --gradio-auth makes the UI public to anyone "
                      "with the link.", flush=True)
            open_share_link(flags.port)
        if flags.autolaunch:
            webbrowser.open(local)

    threading.Thread(target=after_start, daemon=True).start()
    try:
        server.run()
    finally:
        ctx.engine.shutdown()


def main(argv: list[str] | None = None) -> int:
    from engine.flags import parse

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # torchsde warns on float rounding of its own time bounds every step; it is harmless.
    warnings.filterwarnings("ignore", message="Should have ta>=t0")
    # Several LoRAs in one prompt are several PEFT adapters on one model: intended.
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
    for noisy in ("httpx", "httpcore", "diffusers", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    flags = parse(sys.argv[1:] if argv is None else argv)
    serve(build(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start the web UI: parse flags, build the long-lived objects, serve.

This is the composition root: it is the only place that creates the settings, the model registry,
the engine and the server, and hands each what it needs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
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
    from engine.models.downloads import ModelDownloader, sd15_offer
    from engine.settings.flags import device_ids
    from engine.jobs import JobQueue
    from engine.models.registry import BUILTIN_DEMO
    from engine.files import remove_unfinished
    from engine.output.writer import OutputWriter
    from ui.context import UIContext
    from ui.server_control import ServerControl

    parts = shared_parts(flags, config_root)
    folders, settings, registry = parts.folders, parts.settings, parts.registry
    data_dir = settings.data_dir
    # A crash mid-write leaves a temporary file beside the whole old one: tidy those away.
    if remove_unfinished(data_dir / "outputs") + remove_unfinished(data_dir, recursive=False):
        log.info("removed the temporary files of writes a crash cut short")
    devices = device_ids(flags)
    writer = OutputWriter(data_dir / "outputs", settings, name_limit=flags.filenames_max_length)
    engine = engine_on(parts, devices[0], writer, JobQueue(max_waiting=flags.queue_size))
    device = engine.models.device
    add_workers(flags, engine, parts, devices)
    downloader = ModelDownloader(sd15_offer(os.environ.get("HF_ENDPOINT")), folders.checkpoints)
    ctx = UIContext(engine, registry, settings, flags, downloader, control=ServerControl())

    wanted = flags.ckpt or (BUILTIN_DEMO if flags.demo else None)
    explicit = bool(flags.ckpt) and Path(flags.ckpt).is_file()
    first = engine.initial_checkpoint(str(Path(flags.ckpt).resolve()) if explicit else wanted)
    if flags.skip_load_model_at_start:
        log.info("no checkpoint loaded at start (--skip-load-model-at-start); one loads when chosen or for the first job")
    elif first:
        engine.load_checkpoint(first)  # on the GPU lane; the page is served meanwhile
    else:
        log.warning("No checkpoint found in %s. Put a .safetensors model there, or start with --demo.",
                    folders.checkpoints)
    log.info("device: %s, %s%s", device.name, str(device.dtype).replace("torch.", ""),
             f" (VAE {str(device.vae).replace('torch.', '')})" if device.vae != device.dtype else "")
    if settings.load_warning:
        log.warning(settings.load_warning)
    return ctx


@dataclasses.dataclass(frozen=True)
class SharedParts:
    """What every engine of this process shares, whichever GPU it runs on."""

    flags: argparse.Namespace
    folders: object
    settings: object
    registry: object
    hashes: object
    faults: object
    config_root: Path | None = None


def shared_parts(flags, config_root: Path | None = None) -> "SharedParts":
    """The settings, folders and checkpoint list of this data dir, which every engine of the
    process shares."""
    from engine.settings import a1111_flags
    from engine.memory import memory_guard
    from engine.settings.folders import Folders
    from engine.files import HashCache
    from engine.models.registry import ModelRegistry
    from engine.settings.store import Settings

    # Tests only: stages that run out of memory on purpose, read once here and handed to the add-ons.
    faults = memory_guard.FaultPlan.parse(os.environ.get(memory_guard.FAULTS_ENV))
    if faults:
        log.warning("%s=%s: stages will run out of memory on purpose (a test setting)", memory_guard.FAULTS_ENV,
                    os.environ[memory_guard.FAULTS_ENV])
    data_dir = Path(flags.data_dir).resolve() if flags.data_dir else APP_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    folders = Folders.in_data_dir(data_dir, flags)
    folders.fill_flags(flags)  # /sdapi/v1/cmd-flags shows the folders in use
    for flag, note in a1111_flags.given(flags):
        log.info("%s: %s", flag, note)
    if flags.allow_unsafe_checkpoints:
        log.warning("%s: pickled .ckpt/.pt model files will be opened. They are read with "
                    "torch.load(weights_only=True), which refuses most code, but only open files "
                    "you trust.", "--disable-safe-unpickle" if flags.disable_safe_unpickle
                    else "--allow-unsafe-checkpoints")
    settings = Settings(folders.settings_file, data_dir=data_dir)
    apply_setting_flags(settings, flags)
    folders.checkpoints.mkdir(parents=True, exist_ok=True)
    checkpoint_folders = [folders.checkpoints] + ([Path(flags.ckpt_dir)] if flags.ckpt_dir else [])
    explicit = [Path(flags.ckpt)] if flags.ckpt and Path(flags.ckpt).is_file() else []
    hashes = HashCache(data_dir / "cache.json")
    registry = ModelRegistry(checkpoint_folders, hashes, explicit, include_demo=flags.demo,
                             hashing=not flags.no_hashing)
    return SharedParts(flags, folders, settings, registry, hashes, faults, config_root)


def engine_on(parts: SharedParts, device_id: str | None, writer, queue):
    """An engine on one device: its own models, add-ons (they hold models on the device) and lane."""
    from engine.addons import AddOns
    from engine.devices import DeviceConfig
    from engine.engine import Engine
    from engine.models.checkpoint_cache import CheckpointCache
    from engine.models.pipelines import ModelManager
    from engine.models.text_encoders import TextEncoderLibrary
    from engine.settings.flags import uses_cpu

    flags, folders, settings = parts.flags, parts.folders, parts.settings
    device = DeviceConfig.choose(use_cpu=uses_cpu(flags), no_half=flags.no_half, no_half_vae=flags.no_half_vae,
                                 precision=flags.precision, device_id=device_id,
                                 upcast_sampling=flags.upcast_sampling)
    # The text encoders and VAEs picked beside FLUX.1 / SD 3.x transformers (Forge's and
    # ComfyUI's folder name for the encoders).
    (folders.models / "text_encoder").mkdir(parents=True, exist_ok=True)
    text_encoders = TextEncoderLibrary(folders.models / "text_encoder", folders.vae)
    models = ModelManager(parts.registry, device, allow_unsafe=flags.allow_unsafe_checkpoints,
                          cache=CheckpointCache(lambda: settings["sd_checkpoint_cache"]),
                          memory_mode=lambda: settings["memory_mode"], text_encoders=text_encoders,
                          **({"config_root": parts.config_root} if parts.config_root else {}))
    extensions = "none" if flags.disable_all_extensions else "builtin" if flags.disable_extra_extensions else "all"
    # Extensions are imported here, once: the built-in ones and the enabled third-party ones
    # (a disabled or newly installed one waits for a start where it is enabled).
    addons = AddOns.from_folders(folders, parts.hashes, device=device, allow_unsafe=flags.allow_unsafe_checkpoints,
                                 extensions=extensions, disabled_extensions=settings["disabled_extensions"],
                                 faults=parts.faults)
    engine = Engine(models, writer, settings, addons, queue=queue)
    if flags.demo:
        from engine.controlnet.demo import ensure_demo_controlnet
        ensure_demo_controlnet(engine.addons.controlnets.folder)
        engine.addons.controlnets.refresh()
    return engine


def worker_engine(parts: SharedParts, device_id: str | None):
    """An engine for a worker: it saves nothing itself (engine/cluster/recording.py)."""
    from engine.cluster.recording import RecordingWriter
    from engine.jobs import JobQueue

    queue = JobQueue(name=f"worker-{device_id or 'default'}")
    writer = RecordingWriter(parts.settings.data_dir / "outputs", parts.settings,
                             lambda: queue.current.id if queue.current is not None else None)
    return engine_on(parts, device_id, writer, queue)


def build_worker_engine(flags: argparse.Namespace, device_id: str | None, config_root: Path | None = None):
    """In a worker process or Ray actor (engine/cluster): its engine, from its machine's flags
    (with --data-dir made absolute, since the process may start elsewhere)."""
    return worker_engine(shared_parts(copy.copy(flags), config_root), device_id)


def _worker_flags(flags: argparse.Namespace) -> argparse.Namespace:
    data_dir = Path(flags.data_dir).resolve() if flags.data_dir else APP_DIR
    return argparse.Namespace(**{**vars(flags), "data_dir": str(data_dir)})


def serve_as_worker(flags) -> int:
    """--worker: no UI; this machine's GPUs join the studio's cluster as workers."""
    from engine.cluster.ray_cluster import serve_workers
    from engine.settings.flags import device_ids

    build = functools.partial(build_worker_engine, _worker_flags(flags))
    return serve_workers(flags, device_ids(flags), build, flags.worker_name or socket.gethostname())


def add_workers(flags, engine, parts: SharedParts, devices: list) -> None:
    """The other GPUs of this machine as workers in this process, and with --cluster the
    workers of other machines (Ray is imported only then)."""
    if len(devices) == 1 and not flags.cluster:
        return  # one GPU: one lane, as always
    from engine.cluster.lanes import StudioLane, WorkerLane
    from engine.cluster.process_workers import ProcessClient

    studio_generates = devices[0] is not None or not flags.cluster
    engine.has_workers, engine.studio_generates = True, studio_generates

    def loaded():
        current = engine.models.current
        return (current.info.title, current.info.sha256) if current is not None else None

    engine.queue.remove_lane(engine.queue.lanes[0])
    engine.queue.add_lane(StudioLane(studio_generates, loaded))
    node = flags.worker_name or socket.gethostname()
    # The other GPUs: a worker process each (engine/cluster/process_workers.py says why not a thread).
    build = functools.partial(build_worker_engine, _worker_flags(flags), config_root=parts.config_root)
    for number, device_id in enumerate(devices[1:], start=1):
        label = f"gpu{device_id}" if device_id is not None else f"lane{number}"
        client = ProcessClient(build, device_id, f"{node}:{label}")
        engine.queue.add_lane(WorkerLane(client, client.first_info))
    if flags.cluster:
        from engine.cluster.ray_cluster import StudioCluster

        engine.cluster = StudioCluster.start(flags, engine.queue)


def settings_in_sections(settings, names: list[str]) -> tuple[list[str], list[str]]:
    """The keys of our settings in the named sections (AUTOMATIC1111's section ids, such as
    saving-paths or sampler-params, or ours, such as "Saving images"), and the names that
    matched none."""
    from engine.settings.store import A1111_SECTIONS

    keys, unknown = [], []
    for name in names:
        wanted = name.lower().replace("-", " ").replace("_", " ")
        found = [o.key for o in settings.options.values()
                 if o.section.lower() == wanted or o.key in A1111_SECTIONS.get(name, ())]
        keys += found
        if not found:
            unknown.append(name)
    return keys, unknown


def apply_setting_flags(settings, flags) -> None:
    """What start flags say about settings: memory modes (saved, as a choice the user can change
    later), and for this run only the theme, API logging and the frozen settings."""
    from engine.settings.flags import memory_mode
    from engine.output.saving_options import DIRECTORY_KEYS

    if memory_mode(flags):  # the flag sets the setting, which Settings can change while running
        settings.update({"memory_mode": memory_mode(flags)})
    if flags.theme:
        settings.pin({"ui_theme": flags.theme}, "the theme is set by --theme at start")
    if flags.api_log:
        settings.pin({"api_log_requests": True}, "API logging is set by --api-log at start")
    if flags.hide_ui_dir_config:
        settings.lock(DIRECTORY_KEYS, "folders and file names are fixed by --hide-ui-dir-config")
    if flags.freeze_specific_settings:
        keys = [key.strip() for key in flags.freeze_specific_settings.split(",") if key.strip()]
        settings.lock(keys, "it is frozen by --freeze-specific-settings")
        unknown = [key for key in keys if key not in settings.options]
        if unknown:
            log.warning("--freeze-specific-settings: not settings of this app (nothing to freeze): %s",
                        ", ".join(unknown))
    if flags.freeze_settings_in_sections:
        names = [part.strip() for part in flags.freeze_settings_in_sections.split(",") if part.strip()]
        keys, unknown = settings_in_sections(settings, names)
        settings.lock(keys, "its section is frozen by --freeze-settings-in-sections")
        if unknown:
            log.warning("--freeze-settings-in-sections: no settings here in %s", ", ".join(unknown))
    if flags.freeze_settings:
        settings.lock(None, "settings are frozen by --freeze-settings")


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
    from engine.settings.flags import is_exposed

    local = f"{scheme}://127.0.0.1:{flags.port}{getattr(flags, 'subpath', None) or ''}/"
    print(f"Running on local URL:  {local}", flush=True)
    if getattr(flags, "server_name", None) and flags.server_name not in ("127.0.0.1", "localhost"):
        print(f"Listening on:          {scheme}://{flags.server_name}:{flags.port}/", flush=True)
    if flags.listen:
        for address in lan_addresses():
            print(f"On your network:       {scheme}://{address}:{flags.port}/", flush=True)
    # --share says its own warning; this one is for the other ways onto the network.
    if is_exposed(argparse.Namespace(**{**vars(flags), "share": False})) and not flags.gradio_auth:
        print("Warning: listening on the network without --gradio-auth: anyone on your network "
              "can use this UI.", flush=True)
    if flags.api:
        print(f"API docs:              {local}docs", flush=True)
    if getattr(flags, "nowebui", False):
        print("API only (--nowebui): no web page is served", flush=True)
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

    from engine.settings.flags import listen_host
    from ui.server import create_server

    flags = ctx.flags
    app = create_server(ctx)
    scheme = "https" if flags.tls_certfile else "http"
    config = uvicorn.Config(app, host=listen_host(flags), port=flags.port, log_level="warning",
                            ssl_keyfile=flags.tls_keyfile, ssl_certfile=flags.tls_certfile,
                            timeout_keep_alive=flags.timeout_keep_alive, timeout_graceful_shutdown=2)
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
    ctx.control.attach(lambda: setattr(server, "should_exit", True))
    try:
        server.run()
    finally:
        ctx.engine.shutdown()
    if ctx.control.restart_requested:
        ctx.control.exec_again()


def main(argv: list[str] | None = None) -> int:
    from engine.settings.flags import parse

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # torchsde warns on float rounding of its own time bounds every step; it is harmless.
    warnings.filterwarnings("ignore", message="Should have ta>=t0")
    # Several LoRAs in one prompt are several PEFT adapters on one model: intended.
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
    for noisy in ("httpx", "httpcore", "diffusers", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    flags = parse(sys.argv[1:] if argv is None else argv)
    if flags.loglevel:
        logging.getLogger().setLevel(flags.loglevel)
    if flags.worker:
        return serve_as_worker(flags)
    try:
        ctx = build(flags)
    except ValueError as error:  # a flag the machine cannot honour (--device-id 7 on one GPU)
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    serve(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command-line flags, with the names users of the mature web UIs already type.

Flags come from the command line and from the COMMANDLINE_ARGS environment variable (the command
line wins where both set the same flag).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
from typing import Sequence

from engine.settings import a1111_flags


def _credentials(text: str) -> list[tuple[str, str]]:
    """"user:pass,user2:pass2" -> [(user, pass), ...]; a password may contain ':'."""
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if ":" not in item:
            raise argparse.ArgumentTypeError(f"'{item}' is not user:password")
        user, password = item.split(":", 1)
        if not user or not password:
            raise argparse.ArgumentTypeError(f"'{item}' needs both a user name and a password")
        pairs.append((user, password))
    if not pairs:
        raise argparse.ArgumentTypeError("no user:password given")
    return pairs


class _Parser(argparse.ArgumentParser):
    """argparse, with the closest known flag named when one is misspelt."""

    def parse_args(self, args=None, namespace=None):
        flags, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error("unrecognized arguments: " + " ".join(_with_suggestion(arg, self) for arg in unknown))
        return flags


def _with_suggestion(arg: str, parser: argparse.ArgumentParser) -> str:
    if not arg.startswith("-"):
        return arg
    known = [option for action in parser._actions for option in action.option_strings]
    close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1, cutoff=0.6)
    return f"{arg} (did you mean {close[0]}?)" if close else arg


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="app.py", usage="%(prog)s [flags]  (app.py --help lists them)",
        description="Stable Diffusion web UI: generate images in the browser.")
    net = parser.add_argument_group("network")
    net.add_argument("--listen", action="store_true",
                     help="listen on all network interfaces (0.0.0.0) so others on the LAN can connect")
    net.add_argument("--server-name", metavar="HOST",
                     help="the address to listen on (a host name or IP; wins over --listen)")
    net.add_argument("--port", type=int, default=None,
                     help="port to serve on (default 7860; 7861 with --nowebui)")
    net.add_argument("--subpath", metavar="PATH",
                     help="serve everything under this path prefix (behind a reverse proxy), e.g. sd")
    net.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    net.add_argument("--gradio-auth", type=_credentials, metavar="USER:PASS[,USER:PASS]",
                     help="require a login for the UI")
    net.add_argument("--api", action="store_true", help="serve the /sdapi/v1 HTTP API")
    net.add_argument("--nowebui", action="store_true",
                     help="serve the API only, no web page (implies --api)")
    net.add_argument("--api-server-stop", action="store_true",
                     help="add /sdapi/v1/server-stop, server-restart and server-kill")
    net.add_argument("--api-log", action="store_true",
                     help="log every API call (sets the api_log_requests setting for this run)")
    net.add_argument("--gradio-auth-path", metavar="FILE",
                     help="a file of user:pass logins for the UI (one or more per line, comma-separated)")
    net.add_argument("--api-auth", type=_credentials, metavar="USER:PASS[,USER:PASS]",
                     help="require HTTP Basic credentials for the API")
    net.add_argument("--cors-allow-origins", metavar="ORIGIN[,ORIGIN]",
                     help="let web pages from these origins call the server (no cross-origin access without it)")
    net.add_argument("--cors-allow-origins-regex", metavar="REGEX",
                     help="let web pages from origins matching this regular expression call the server")
    net.add_argument("--queue-size", type=int, default=50,
                     help="most jobs waiting at once; more are refused with 'queue full' (default 50)")
    net.add_argument("--timeout-keep-alive", type=int, default=30, metavar="SECONDS",
                     help="how long an idle HTTP connection is kept open (default 30)")
    net.add_argument("--enable-insecure-extension-access", action="store_true",
                     help="allow installing and updating extensions from the UI even when it is "
                          "shared with --listen or --share")
    net.add_argument("--tls-keyfile", help="TLS private key file (serve https)")
    net.add_argument("--tls-certfile", help="TLS certificate file (serve https)")
    net.add_argument("--autolaunch", action="store_true", help="open the UI in the default browser")

    models = parser.add_argument_group("models and files")
    models.add_argument("--ckpt", help="checkpoint to load at start (a file path, name or hash)")
    models.add_argument("--ckpt-dir", help="another folder to look for checkpoints in")
    models.add_argument("--data-dir", default=None,
                        help="folder for config.json, outputs/ and models/ (default: the app folder)")
    models.add_argument("--models-dir", default=None,
                        help="folder holding the model folders (default: models/ in the data folder)")
    for flag, what in FOLDER_FLAGS.items():
        models.add_argument(flag, metavar="DIR", help=f"folder of {what} (default: {FOLDER_DEFAULTS[flag]})")
    models.add_argument("--styles-file", action="append", metavar="FILE",
                        help="styles CSV file (may be repeated, wildcards allowed; new styles are "
                             "saved to the first; default: styles.csv in the data folder)")
    models.add_argument("--ui-settings-file", metavar="FILE",
                        help="the settings file (default: config.json in the data folder)")
    models.add_argument("--allow-unsafe-checkpoints", action="store_true",
                        help="allow pickled .ckpt/.pt checkpoints (read with weights_only=True)")
    models.add_argument("--disable-safe-unpickle", action="store_true",
                        help="the same as --allow-unsafe-checkpoints")
    models.add_argument("--allow-server-folders", action="store_true",
                        help="let the img2img Batch tab read and write folders on this machine "
                             "even when the UI is shared with --listen or --share")
    models.add_argument("--skip-load-model-at-start", action="store_true",
                        help="start with no checkpoint loaded (one loads when chosen or first used)")
    models.add_argument("--ui-debug-mode", action="store_true",
                        help="the same as --skip-load-model-at-start")
    models.add_argument("--no-hashing", action="store_true",
                        help="do not compute checkpoints' sha256 (faster first load; no Model hash "
                             "in the infotext)")
    models.add_argument("--filenames-max-length", type=int, default=128, metavar="N",
                        help="longest file name of a saved picture, in characters (default 128)")
    models.add_argument("--disable-all-extensions", action="store_true",
                        help="run no extension, built-in ones included")
    models.add_argument("--disable-extra-extensions", action="store_true",
                        help="run only the built-in extensions")
    models.add_argument("--demo", action="store_true",
                        help="add a tiny built-in random model: try the UI with no download")

    ui = parser.add_argument_group("user interface")
    ui.add_argument("--theme", choices=("light", "dark"), type=str.lower,
                    help="show the UI in this theme (wins over the theme setting for this run)")
    ui.add_argument("--freeze-settings", action="store_true", help="no setting can be changed")
    ui.add_argument("--freeze-settings-in-sections", metavar="SECTIONS",
                    help="settings of these sections cannot be changed (comma-separated section "
                         "names or ids, e.g. saving-images,upscaling)")
    ui.add_argument("--freeze-specific-settings", metavar="KEYS",
                    help="these settings cannot be changed (comma-separated keys)")
    ui.add_argument("--hide-ui-dir-config", action="store_true",
                    help="output folders and file name patterns are hidden in Settings and cannot "
                         "be changed")
    ui.add_argument("--loglevel", type=str.upper, choices=("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"),
                    help="how much the console log says (default INFO)")

    cluster = parser.add_argument_group("cluster (several machines, on Ray; docs/cluster.md)")
    cluster.add_argument("--cluster", action="store_true",
                         help="start a Ray cluster (or join the one at --cluster-address) and send "
                              "generations to the GPU workers that join it")
    cluster.add_argument("--worker", action="store_true",
                         help="serve no UI: add this machine's GPUs as workers of the studio's "
                              "cluster at --cluster-address")
    cluster.add_argument("--cluster-address", metavar="HOST:PORT",
                         help="the Ray cluster to join (the studio's machine and --cluster-port)")
    cluster.add_argument("--cluster-port", type=int, default=6379,
                         help="the port of the Ray cluster --cluster starts (default 6379)")
    cluster.add_argument("--cluster-bind", metavar="IP",
                         help="the private address Ray listens on and workers reach it at "
                              "(default 127.0.0.1: this machine only)")
    cluster.add_argument("--worker-name", metavar="NAME",
                         help="the name this machine's workers show in the studio (default: host name)")

    compute = parser.add_argument_group("compute")
    compute.add_argument("--use-cpu", nargs="+", default=[], metavar="all",
                         help="run on the CPU ('all')")
    compute.add_argument("--device-id", metavar="N[,N...]",
                         help="which CUDA GPUs to use (indexes as nvidia-smi numbers them, e.g. 0,2; "
                              "default: every visible GPU, one worker each)")
    compute.add_argument("--no-half", action="store_true",
                         help="keep the model in 32-bit floats (slower, more memory; for cards "
                              "that produce black images in half precision)")
    compute.add_argument("--no-half-vae", action="store_true",
                         help="keep the VAE in 32-bit floats (against black or NaN images from "
                              "some VAEs in half precision)")
    compute.add_argument("--precision", choices=("full", "half", "autocast"), default="autocast",
                         help="full: everything in 32-bit floats (as --no-half --no-half-vae); "
                              "half: everything in 16-bit, the VAE too; autocast (default): 16-bit "
                              "on a GPU, with the VAE decoding in 32-bit where it needs to")
    compute.add_argument("--upcast-sampling", action="store_true",
                         help="with a 16-bit model, keep the sampler's latents in 32-bit floats")
    compute.add_argument("--medvram", action="store_true",
                         help="keep each model (text encoder, UNet, VAE) in RAM until it runs: less VRAM, "
                              "a little slower (sets the memory_mode setting)")
    compute.add_argument("--medvram-sdxl", action="store_true",
                         help="--medvram for SDXL models only")
    compute.add_argument("--lowvram", action="store_true",
                         help="bring the weights to the GPU layer by layer: least VRAM, slower "
                              "(sets the memory_mode setting)")
    a1111_flags.add_to(parser)
    return parser


# Folder flags (AUTOMATIC1111's names) -> what goes there; their defaults are under the models
# folder (FOLDER_DEFAULTS, resolved by engine.settings.folders).
FOLDER_FLAGS = {
    "--vae-dir": "VAE files",
    "--lora-dir": "LoRA and LyCORIS files",
    "--lyco-dir-backcompat": "more LoRA/LyCORIS files (the old separate LyCORIS folder)",
    "--embeddings-dir": "textual-inversion embeddings",
    "--controlnet-dir": "ControlNet models",
    "--esrgan-models-path": "ESRGAN upscalers",
    "--realesrgan-models-path": "Real-ESRGAN upscalers",
    "--swinir-models-path": "SwinIR upscalers",
    "--scunet-models-path": "ScuNET upscalers",
    "--ldsr-models-path": "the LDSR upscaler",
    "--gfpgan-models-path": "GFPGAN face restoration weights",
    "--codeformer-models-path": "CodeFormer face restoration weights",
}
FOLDER_DEFAULTS = {
    "--vae-dir": "models/VAE", "--lora-dir": "models/Lora", "--lyco-dir-backcompat": "models/LyCORIS",
    "--embeddings-dir": "models/embeddings", "--controlnet-dir": "models/ControlNet",
    "--esrgan-models-path": "models/ESRGAN", "--realesrgan-models-path": "models/RealESRGAN",
    "--swinir-models-path": "models/SwinIR", "--scunet-models-path": "models/ScuNET",
    "--ldsr-models-path": "models/LDSR", "--gfpgan-models-path": "models/GFPGAN",
    "--codeformer-models-path": "models/Codeformer",
}


def parse(argv: Sequence[str] | None = None, environ: dict | None = None) -> argparse.Namespace:
    environ = os.environ if environ is None else environ
    from_env = shlex.split(environ.get("COMMANDLINE_ARGS", ""))
    args = list(from_env) + list(argv or [])
    parser = build_parser()
    flags = parser.parse_args(args)
    if flags.port is None:
        flags.port = 7861 if flags.nowebui else 7860  # as the web UI these flags come from
    if flags.port < 1 or flags.port > 65535:
        parser.error(f"--port must be between 1 and 65535, got {flags.port}")
    if bool(flags.tls_keyfile) != bool(flags.tls_certfile):
        parser.error("--tls-keyfile and --tls-certfile go together")
    if flags.queue_size < 1:
        parser.error(f"--queue-size must be at least 1, got {flags.queue_size}")
    if flags.timeout_keep_alive < 1:
        parser.error(f"--timeout-keep-alive must be at least 1 second, got {flags.timeout_keep_alive}")
    if flags.filenames_max_length < 16:
        parser.error(f"--filenames-max-length must be at least 16, got {flags.filenames_max_length}")
    if flags.device_id is not None:
        indexes = [part.strip() for part in flags.device_id.split(",")]
        if not all(part.isdigit() for part in indexes) or len(set(indexes)) != len(indexes):
            parser.error(f"--device-id must be a GPU index or a list of them (0, 1, or 0,2; each once), "
                         f"got {flags.device_id!r}")
        flags.device_id = ",".join(indexes)
    _check_cluster_flags(flags, parser)
    if flags.subpath is not None:
        flags.subpath = _clean_subpath(flags.subpath, parser)
    if flags.cors_allow_origins_regex:
        try:
            pattern = re.compile(flags.cors_allow_origins_regex)
        except re.error as error:
            parser.error(f"--cors-allow-origins-regex is not a regular expression: {error}")
        if pattern.fullmatch("https://any-site-at-all.example"):
            # Cross-origin calls carry the user's login: a pattern that lets every site in
            # would let any web page act as them.
            parser.error("--cors-allow-origins-regex matches any web site; name the sites to allow")
    if flags.nowebui:
        flags.api = True
    if flags.disable_safe_unpickle:
        flags.allow_unsafe_checkpoints = True
    if flags.ui_debug_mode:
        flags.skip_load_model_at_start = True
    if flags.gradio_auth_path:
        flags.gradio_auth = (flags.gradio_auth or []) + _logins_from_file(flags.gradio_auth_path)
    return flags


def _clean_subpath(value: str, parser: argparse.ArgumentParser) -> str:
    """"sd", "/sd/", "sd/ui" -> "/sd", "/sd/ui"; "" or "/" mean none."""
    parts = [part for part in value.strip().split("/") if part]
    if any(part in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._~-]+", part) for part in parts):
        parser.error(f"--subpath may hold only letters, digits and . _ ~ - between slashes, got {value!r}")
    return "/" + "/".join(parts) if parts else ""


def _logins_from_file(path: str) -> list[tuple[str, str]]:
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as error:
        build_parser().error(f"--gradio-auth-path: cannot read {path}: {error.strerror}")
    logins = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                logins += _credentials(line)
            except argparse.ArgumentTypeError as error:
                build_parser().error(f"--gradio-auth-path {path}, line {number}: {error}")
    if not logins:
        build_parser().error(f"--gradio-auth-path {path} holds no user:password line")
    return logins


def listen_host(flags: argparse.Namespace) -> str:
    """The address the server binds: --server-name, else every interface with --listen, else
    this machine only."""
    if getattr(flags, "server_name", None):
        return flags.server_name
    return "0.0.0.0" if getattr(flags, "listen", False) else "127.0.0.1"


def _check_cluster_flags(flags: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if flags.cluster and flags.worker:
        parser.error("--cluster starts the studio and --worker adds a machine's GPUs to it: use one")
    if flags.cluster and flags.share:
        parser.error("--cluster cannot be used with --share: a Ray cluster has no authentication of its "
                     "own, so it must stay on a private network (docs/cluster.md)")
    if flags.worker and not flags.cluster_address:
        parser.error("--worker needs --cluster-address HOST:PORT (the studio's machine and its --cluster-port)")
    if flags.cluster_address is not None:
        host, _, port = flags.cluster_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            parser.error(f"--cluster-address must be HOST:PORT, got {flags.cluster_address!r}")
    if not 0 < flags.cluster_port < 65536:
        parser.error(f"--cluster-port must be between 1 and 65535, got {flags.cluster_port}")


def device_ids(flags: argparse.Namespace) -> list[str | None]:
    """The devices to make pictures on, one worker each: the --device-id list, else every
    visible GPU, else [None] (the CPU, or the default device)."""
    if uses_cpu(flags):
        return [None]
    if flags.device_id:
        return flags.device_id.split(",")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(index) for index in range(count)] if count > 1 else [None]


def is_exposed(flags: argparse.Namespace) -> bool:
    """Whether others than this machine's user can reach the UI (--listen, --share, a
    --server-name other than this machine's loopback, or --subpath, which means a reverse proxy
    in front: its requests come from this machine but on behalf of anyone)."""
    host = (getattr(flags, "server_name", None) or "").strip().lower()
    loopback = host in ("", "localhost", "::1", "[::1]") or host.startswith("127.")
    return bool(getattr(flags, "listen", False) or getattr(flags, "share", False) or not loopback
                or getattr(flags, "subpath", None))


def cors_origins(flags: argparse.Namespace) -> list[str]:
    return [o.strip() for o in (getattr(flags, "cors_allow_origins", None) or "").split(",") if o.strip()]


def memory_mode(flags: argparse.Namespace) -> str | None:
    """The memory_mode the flags ask for, None when they say nothing. The strongest wins, as in
    the web UI these flags come from."""
    for flag, mode in (("lowvram", "lowvram"), ("medvram", "medvram"), ("medvram_sdxl", "medvram-sdxl")):
        if getattr(flags, flag, False):
            return mode
    return None


def uses_cpu(flags: argparse.Namespace) -> bool:
    return any(item.lower() in ("all", "sd") for item in flags.use_cpu)


# Flags whose values are secrets (logins, tokens): /cmd-flags shows only that they are set.
SECRET_FLAGS = ("gradio_auth", "api_auth", "gradio_auth_path", "ngrok", "ngrok_options")


def public_dict(flags: argparse.Namespace) -> dict:
    """The flags as /sdapi/v1/cmd-flags shows them, with credentials hidden."""
    values = {}
    for key, value in vars(flags).items():
        if key in SECRET_FLAGS and value:
            value = "<hidden>"
        values[key] = value
    return values

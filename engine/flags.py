"""Command-line flags, with the names users of the mature web UIs already type.

Flags come from the command line and from the COMMANDLINE_ARGS environment variable (the command
line wins where both set the same flag).
"""

from __future__ import annotations

import argparse
import os
import shlex
from typing import Sequence


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py", description="Stable Diffusion web UI: generate images in the browser.")
    net = parser.add_argument_group("network")
    net.add_argument("--listen", action="store_true",
                     help="listen on all network interfaces (0.0.0.0) so others on the LAN can connect")
    net.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    net.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    net.add_argument("--gradio-auth", type=_credentials, metavar="USER:PASS[,USER:PASS]",
                     help="require a login for the UI")
    net.add_argument("--api", action="store_true", help="serve the /sdapi/v1 HTTP API")
    net.add_argument("--gradio-auth-path", metavar="FILE",
                     help="a file of user:pass logins for the UI (one or more per line, comma-separated)")
    net.add_argument("--api-auth", type=_credentials, metavar="USER:PASS[,USER:PASS]",
                     help="require HTTP Basic credentials for the API")
    net.add_argument("--cors-allow-origins", metavar="ORIGIN[,ORIGIN]",
                     help="let web pages from these origins call the server (no cross-origin access without it)")
    net.add_argument("--queue-size", type=int, default=50,
                     help="most jobs waiting at once; more are refused with 'queue full' (default 50)")
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
    models.add_argument("--allow-unsafe-checkpoints", action="store_true",
                        help="allow pickled .ckpt/.pt checkpoints (read with weights_only=True)")
    models.add_argument("--allow-server-folders", action="store_true",
                        help="let the img2img Batch tab read and write folders on this machine "
                             "even when the UI is shared with --listen or --share")
    models.add_argument("--demo", action="store_true",
                        help="add a tiny built-in random model: try the UI with no download")

    compute = parser.add_argument_group("compute")
    compute.add_argument("--use-cpu", nargs="+", default=[], metavar="all",
                         help="run on the CPU ('all')")
    compute.add_argument("--no-half", action="store_true",
                         help="keep the model in 32-bit floats (slower, more memory; for cards "
                              "that produce black images in half precision)")
    compute.add_argument("--medvram", action="store_true",
                         help="keep each model (text encoder, UNet, VAE) in RAM until it runs: less VRAM, "
                              "a little slower (sets the memory_mode setting)")
    compute.add_argument("--medvram-sdxl", action="store_true",
                         help="--medvram for SDXL models only")
    compute.add_argument("--lowvram", action="store_true",
                         help="bring the weights to the GPU layer by layer: least VRAM, slower "
                              "(sets the memory_mode setting)")
    return parser


def parse(argv: Sequence[str] | None = None, environ: dict | None = None) -> argparse.Namespace:
    environ = os.environ if environ is None else environ
    from_env = shlex.split(environ.get("COMMANDLINE_ARGS", ""))
    args = list(from_env) + list(argv or [])
    flags = build_parser().parse_args(args)
    if flags.port < 1 or flags.port > 65535:
        build_parser().error(f"--port must be between 1 and 65535, got {flags.port}")
    if bool(flags.tls_keyfile) != bool(flags.tls_certfile):
        build_parser().error("--tls-keyfile and --tls-certfile go together")
    if flags.queue_size < 1:
        build_parser().error(f"--queue-size must be at least 1, got {flags.queue_size}")
    if flags.gradio_auth_path:
        flags.gradio_auth = (flags.gradio_auth or []) + _logins_from_file(flags.gradio_auth_path)
    return flags


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


def is_exposed(flags: argparse.Namespace) -> bool:
    """Whether others than this machine's user can reach the UI (--listen or --share)."""
    return bool(getattr(flags, "listen", False) or getattr(flags, "share", False))


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


def public_dict(flags: argparse.Namespace) -> dict:
    """The flags as /sdapi/v1/cmd-flags shows them, with credentials hidden."""
    values = {}
    for key, value in vars(flags).items():
        if key in ("gradio_auth", "api_auth", "gradio_auth_path") and value:
            value = "<hidden>"
        values[key] = value
    return values

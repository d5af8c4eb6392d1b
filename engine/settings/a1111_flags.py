"""The command-line flags of AUTOMATIC1111's web UI (v1.10.1, with its built-in extensions and
the ControlNet extension) that mean nothing here, so a user's `webui-user.sh` starts unchanged.

Flags that do mean something here are defined with the same names in engine/settings/flags.py. Each flag
below is accepted with the arguments it takes there; when given, start-up prints one line saying
what this app does instead (`NOTES`).
"""

from __future__ import annotations

import argparse
import json

# How a flag takes its value: a switch, one value, one or more values, or repeatable.
SWITCH, VALUE, INT, VALUES, APPEND, JSON = "switch", "value", "int", "values", "append", "json"

_ATTENTION = ("attention runs on PyTorch's scaled-dot-product attention (what diffusers uses); "
              "for less memory use the attention_slicing setting")
_LAUNCHER = "webui.sh/webui.bat install what is missing on each start; nothing else to do"
_NOTHING_IN_A1111 = "it does nothing in AUTOMATIC1111 1.10 either"
_NO_NETWORK = "nothing is downloaded at start (the UI offers downloads when a model is missing)"

# flag -> (kind, what this app does instead)
NOTES: dict[str, tuple[str, str]] = {
    "-f": (SWITCH, "running as root needs no flag here"),
    "--update-all-extensions": (SWITCH, "update extensions from the Extensions tab"),
    "--skip-python-version-check": (SWITCH, _LAUNCHER),
    "--skip-torch-cuda-test": (SWITCH, "the device is chosen at start: CUDA when it works, else the CPU"),
    "--reinstall-xformers": (SWITCH, "xformers is not used; " + _ATTENTION),
    "--reinstall-torch": (SWITCH, "torch is installed by TORCH_COMMAND when the venv has none; "
                                  "delete the venv folder to reinstall it"),
    "--update-check": (SWITCH, "no update check is made"),
    "--test-server": (SWITCH, "the tests start their own servers (./test.sh)"),
    "--log-startup": (SWITCH, "start-up already logs each step"),
    "--dump-sysinfo": (SWITCH, "GET /internal/sysinfo gives the system information"),
    "--do-not-download-clip": (SWITCH, _NO_NETWORK),
    "--config": (VALUE, "a checkpoint's architecture is recognised from the file (a .yaml beside "
                        "it is read for SD 2.x v-prediction)"),
    "--gfpgan-dir": (VALUE, "GFPGAN needs no source folder; its weights go in --gfpgan-models-path"),
    "--gfpgan-model": (VALUE, "the newest GFPGAN*.pth in --gfpgan-models-path is used"),
    "--no-progressbar-hiding": (SWITCH, "the progress bar is always shown"),
    "--max-batch-count": (INT, _NOTHING_IN_A1111 + "; the batch count slider's range is a User "
                               "interface setting"),
    "--textual-inversion-templates-dir": (VALUE, "training is not part of this app"),
    "--hypernetwork-dir": (VALUE, "hypernetworks are not supported (LoRAs replaced them)"),
    "--localizations-dir": (VALUE, "the UI is in English only"),
    "--allow-code": (SWITCH, "running code typed into the UI is never allowed"),
    "--lowram": (SWITCH, "single-file checkpoints are memory-mapped and converted tensor by tensor "
                         "on their way to the device, so no extra copy is made in RAM"),
    "--always-batch-cond-uncond": (SWITCH, _NOTHING_IN_A1111),
    "--unload-gfpgan": (SWITCH, _NOTHING_IN_A1111),
    "--ngrok": (VALUE, "ngrok is not built in: use --share, or --listen behind your own tunnel"),
    "--ngrok-region": (VALUE, "ngrok is not built in"),
    "--ngrok-options": (JSON, "ngrok is not built in"),
    "--bsrgan-models-path": (VALUE, "BSRGAN files are RRDBNet models: put them in --esrgan-models-path"),
    "--dat-models-path": (VALUE, "DAT upscalers are not supported"),
    "--clip-models-path": (VALUE, "captions come from a BLIP model in models/BLIP"),
    "--xformers": (SWITCH, _ATTENTION),
    "--force-enable-xformers": (SWITCH, _ATTENTION),
    "--xformers-flash-attention": (SWITCH, _ATTENTION),
    "--deepdanbooru": (SWITCH, _NOTHING_IN_A1111),
    "--opt-split-attention": (SWITCH, _ATTENTION),
    "--opt-sub-quad-attention": (SWITCH, _ATTENTION),
    "--sub-quad-q-chunk-size": (INT, _ATTENTION),
    "--sub-quad-kv-chunk-size": (INT, _ATTENTION),
    "--sub-quad-chunk-threshold": (INT, _ATTENTION),
    "--opt-split-attention-invokeai": (SWITCH, _ATTENTION),
    "--opt-split-attention-v1": (SWITCH, _ATTENTION),
    "--opt-sdp-attention": (SWITCH, _ATTENTION),
    "--opt-sdp-no-mem-attention": (SWITCH, _ATTENTION),
    "--disable-opt-split-attention": (SWITCH, _ATTENTION),
    "--disable-nan-check": (SWITCH, "a VAE decode that makes NaNs is redone in 32-bit floats; "
                                    "there is no NaN check to turn off"),
    "--use-ipex": (SWITCH, "Intel XPUs are not supported: CUDA, Apple MPS or the CPU are used"),
    "--disable-model-loading-ram-optimization": (SWITCH, "loading never makes a second copy in RAM"),
    "--show-negative-prompt": (SWITCH, _NOTHING_IN_A1111),
    "--ui-config-file": (VALUE, "the tabs' defaults and ranges are User interface settings in "
                                "config.json"),
    "--gradio-debug": (SWITCH, "errors are logged with their traceback"),
    "--gradio-img2img-tool": (VALUE, _NOTHING_IN_A1111),
    "--gradio-inpaint-tool": (VALUE, _NOTHING_IN_A1111),
    "--gradio-allowed-path": (APPEND, "only pictures under outputs/ and the app's assets are served"),
    "--opt-channelslast": (SWITCH, "channels-last is used on CUDA automatically (the fast path)"),
    "--use-textbox-seed": (SWITCH, "the seed box takes any seed up to 4294967295"),
    "--disable-console-progressbars": (SWITCH, "no progress bars are printed to the console"),
    "--enable-console-prompts": (SWITCH, "prompts are not printed; the api_log_requests setting "
                                         "logs API calls"),
    "--vae-path": (VALUE, "put the VAE in the VAE folder and choose it in SD VAE"),
    "--administrator": (SWITCH, "no special rights are needed"),
    "--disable-tls-verify": (SWITCH, "no outgoing TLS connections are made"),
    "--gradio-queue": (SWITCH, _NOTHING_IN_A1111),
    "--no-gradio-queue": (SWITCH, "the queue is part of the app: every job goes through it"),
    "--skip-version-check": (SWITCH, "no version check is made"),
    "--no-download-sd-model": (SWITCH, _NO_NETWORK),
    "--add-stop-route": (SWITCH, _NOTHING_IN_A1111 + "; see --api-server-stop"),
    "--no-prompt-history": (SWITCH, "no params.txt with the last prompt is written"),
    "--unix-filenames-sanitization": (SWITCH, "file names keep the characters every system "
                                              "accepts; the pattern is a Saving images setting"),
    "--controlnet-annotator-models-path": (VALUE, "annotator weights are read from the annotators "
                                                  "folder inside the ControlNet folder"),
    "--skip-install": (SWITCH, "webui.sh/webui.bat skip their install step when given it"),
    "--skip-prepare-environment": (SWITCH, "webui.sh/webui.bat skip their install step when given it"),
    "--no-half-controlnet": (SWITCH, "ControlNet models run in the model's precision (--no-half for "
                                     "32-bit)"),
    "--controlnet-preprocessor-cache-size": (INT, "the last preprocessor result is reused"),
    "--controlnet-loglevel": (VALUE, "ControlNet logs with the rest of the app (--loglevel)"),
    "--controlnet-tracemalloc": (SWITCH, "memory figures are at GET /sdapi/v1/memory"),
}


def add_to(parser: argparse.ArgumentParser) -> None:
    """Define every flag of NOTES on `parser`, in a group of their own."""
    group = parser.add_argument_group(
        "accepted for AUTOMATIC1111 compatibility (they change nothing here; start-up says why)")
    for flag, (kind, note) in NOTES.items():
        options = {
            SWITCH: {"action": "store_true"},
            VALUE: {"metavar": "VALUE"},
            INT: {"type": int, "metavar": "N"},
            VALUES: {"nargs": "+", "metavar": "VALUE"},
            APPEND: {"action": "append", "metavar": "VALUE"},
            JSON: {"type": json.loads, "metavar": "JSON"},
        }[kind]
        group.add_argument(flag, help=note, **options)


def given(flags: argparse.Namespace) -> list[tuple[str, str]]:
    """(flag, note) for each flag of NOTES that was given."""
    found = []
    for flag, (kind, note) in NOTES.items():
        value = getattr(flags, _dest(flag), None)
        if value not in (None, False, [], {}):
            found.append((flag, note))
    return found


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")

"""User settings, kept in config.json in the data folder.

Keys are the ecosystem's names, so client programs that read and write /sdapi/v1/options work.
The file is written atomically; keys we do not know are kept; a broken file is moved aside and
defaults are used, so a hand edit gone wrong never stops the app from starting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from engine.prompts.conditioning import EMPHASIS_MODES
from engine.errors import ForbiddenError, RequestError, TooLargeError
from engine.postprocess.faces import RESTORERS
from engine.memory.compiled import FAST_PATH_OPTIONS
from engine.postprocess.ldsr import LDSR_OPTIONS
from engine.memory.memory_modes import MEMORY_MODES
from engine.models.text_encoders import CHECKPOINT_MODULES_KEY, MODULES_KEY
from engine.models.prediction import PREDICTION_OPTIONS
from engine.networks.network_catalogue import EXTRA_NETWORK_OPTIONS
from engine.option import Option
from engine.validation import shown
from engine.settings.options_sampling import IMG2IMG_OPTIONS, SAMPLING_OPTIONS
from engine.output.saving_options import SAVING_OPTIONS
from engine.settings.options_ui import UI_OPTIONS
from engine.files import write_atomically
from engine.job_results import PREVIEW_METHODS
from engine.request import RANDN_SOURCES

log = logging.getLogger(__name__)


__all__ = ["OPTIONS", "Option", "Settings"]

# The settings of AUTOMATIC1111's web UI 1.10 (with its built-in extensions) and their defaults:
# client programs read and send these names. Ours with the same name are the same setting.
# One change of settings (POST /options, override_settings): a client sending back all that GET
# /options gave it sends about 450.
MAX_CHANGES = 1_000
MAX_KEY_CHARS = 200

A1111_DEFAULTS: dict[str, Any] = json.loads(
    (Path(__file__).with_name("a1111_options.json")).read_text(encoding="utf-8"))
# Its settings by section id (saving-paths, sampler-params, ...), as --freeze-settings-in-sections
# names them.
A1111_SECTIONS: dict[str, list[str]] = json.loads(
    (Path(__file__).with_name("a1111_sections.json")).read_text(encoding="utf-8"))

OPTIONS: tuple[Option, ...] = SAVING_OPTIONS + (
    Option("sd_model_checkpoint", "", "Stable Diffusion checkpoint", "Stable Diffusion"),
    # Forge's key: the VAE / text encoder files a FLUX.1 / SD 3 checkpoint loads with, and the
    # choice remembered per checkpoint (its file name -> the files, joined by ", ").
    Option(MODULES_KEY, [], "VAE / Text encoder files for FLUX.1 and SD 3 checkpoints (names in models/VAE "
           "and models/text_encoder; empty: each missing part picked when there is only one file for it)",
           "Stable Diffusion"),
    Option(CHECKPOINT_MODULES_KEY, {}, "VAE / Text encoder files remembered per FLUX.1 / SD 3 checkpoint",
           "Stable Diffusion"),
    # 1: flipping between two checkpoints (or a request's override_settings and back) costs
    # nothing after the first time, and one extra SD 1.5 model is about 2 GB of RAM in half
    # precision (the free-RAM bound in engine/models/checkpoint_cache.py covers bigger ones).
    Option("sd_checkpoint_cache", 1,
           "Checkpoints to keep in RAM besides the loaded one, so switching back to one takes well "
           "under a second (fewer are kept when free RAM runs short; 0: off)", "Stable Diffusion",
           minimum=0, maximum=10),
    # Which VAE: "Automatic", "None" or a file in models/VAE (checked against the files on disk).
    Option("sd_vae", "Automatic", "SD VAE", "Stable Diffusion"),
    # SD.Next's key, which client programs send: the refiner a request gets when it names none
    # (the API's refiner_checkpoint left out; the Refiner accordion's checkpoint at start).
    Option("sd_model_refiner", "None", "Refiner checkpoint used when a request names none (None: no refiner)",
           "Stable Diffusion"),
    Option("hires_fix_refiner_pass", "second pass", "Hires fix: which pass to enable refiner for",
           "Stable Diffusion", choices=("first pass", "second pass", "both passes")),
    Option("refiner_switch_by_sample_steps", False, "Switch to refiner by sampling steps instead of "
           "by timesteps (old behaviour)", "Stable Diffusion"),
    Option("sdxl_refiner_low_aesthetic_score", 2.5, "SDXL refiner: aesthetic score of the negative prompt",
           "Stable Diffusion", minimum=0.0, maximum=10.0),
    Option("sdxl_refiner_high_aesthetic_score", 6.0, "SDXL refiner: aesthetic score of the prompt",
           "Stable Diffusion", minimum=0.0, maximum=10.0),
    Option("CLIP_stop_at_last_layers", 1, "Clip skip", "Stable Diffusion", minimum=1, maximum=12),
    Option("emphasis", "Original", "Emphasis mode", "Stable Diffusion",
           choices=EMPHASIS_MODES),
    Option("randn_source", "GPU",
           "Random number generator source: GPU is A1111's default (torch's CUDA generator; reproduced "
           "exactly on machines without one), CPU draws with torch's CPU generator, NV always uses the "
           "reproduction of the CUDA generator", "Stable Diffusion", choices=RANDN_SOURCES),
    Option("send_seed", True, "Send seed when sending prompt or image to other interface",
           "User interface"),
    Option("send_size", True, "Send size when sending prompt or image to another interface",
           "User interface"),
    Option("upload_max_megapixels", 16.0, "Largest image upload, in megapixels (an uploaded file may "
           "be at most 3 bytes per pixel of it, plus 1 MiB)", "img2img", minimum=1.0, maximum=256.0),
    # The ControlNet extension's name for it, so its clients' settings apply.
    Option("control_net_unit_count", 3, "ControlNet units a request may use (the tabs show 3)", "ControlNet",
           minimum=1, maximum=10),
    Option("control_net_no_detectmap", False, "Do not append the detected maps to the output (the "
           "ControlNet units' preprocessed pictures, after the generated ones)", "ControlNet"),
    Option("control_net_detectmap_autosaving", True, "Save the detected maps when the pictures are saved "
           "(in the samples folder's detected_maps/<preprocessor>/)", "ControlNet"),
    Option("img2img_empty_mask_as_img2img", False,
           "Inpainting with an empty mask runs plain img2img (instead of asking for a mask)",
           "img2img"),
    Option("disabled_extensions", [], "Disabled extensions", "Extensions"),
    Option("face_restoration_model", "Face detailer", "Face restorer", "Face restoration",
           choices=RESTORERS),
    Option("face_restoration_strength", 0.4, "Face detailer denoising strength", "Face restoration",
           minimum=0.05, maximum=1.0),
    Option("code_former_weight", 0.5, "CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
           "Face restoration", minimum=0.0, maximum=1.0),
    Option("live_previews_enable", True, "Show live previews of the image being made", "Live previews"),
    Option("show_progress_every_n_steps", 5, "Live preview every N sampling steps", "Live previews",
           minimum=1, maximum=100),
    # Approx cheap by default: it needs no file. TAESD and Approx NN fetch theirs on first use
    # (engine/models/preview_models.py), as the ecosystem's web UI does.
    Option("show_progress_type", "Approx cheap",
           "Live preview method (Full: decode with the VAE, exact but slower; TAESD: a tiny decoder, full "
           "size and close to the VAE's colours; Approx NN: a small network, a quarter size; Approx cheap: "
           "a fixed colour map, an eighth. TAESD and Approx NN download their small file (5 MB, 0.2 MB) "
           "into models/VAE-approx on first use, checked against the published checksum)", "Live previews",
           choices=PREVIEW_METHODS),
    Option("sd_vae_tiling", False, "VAE tiling: decode and encode large images in tiles (less memory)",
           "Memory and speed"),
    Option("api_log_requests", False, "Log every API call (route, caller, status, time) to the console",
           "API"),
    # On by default, as the ecosystem's web UI fetches these on first use: client scripts written
    # for it name "R-ESRGAN 4x+" or GFPGAN and expect them to work. Safe on a shared server: only
    # the catalogue's files, each checked against its published sha256, a few hundred MB at most.
    Option("auto_download_models", True,
           "API requests may download the standard upscaler and face restoration models they name "
           "(R-ESRGAN, ESRGAN_4x, SwinIR 4x, ScuNET, GFPGAN, CodeFormer), checked against the published "
           "sha256, and ControlNet preprocessors fetch their annotator weights on first use (checked "
           "against the Hub's checksum). Off: the API answers 409 naming the file to put where, and "
           "preprocessors without their weights are refused naming them", "API"),
    Option("attention_slicing", False, "Attention slicing: compute attention in slices (less memory, "
           "slower)", "Memory and speed"),
    # --medvram, --medvram-sdxl and --lowvram set it at start (app.py).
    Option("memory_mode", "none", "Memory mode (GPU only): medvram keeps each model in RAM until it runs "
           "(less VRAM, a little slower); medvram-sdxl does so for SDXL, FLUX.1 and SD 3 models only; lowvram "
           "brings the weights to the GPU layer by layer (least VRAM, slower); t5-cpu keeps the T5-XXL text "
           "encoder of FLUX.1 and SD 3 models on the CPU (about 9.5 GB less VRAM; a new prompt takes seconds "
           "longer to encode); auto picks one of these per model from its size and the card's",
           "Memory and speed",
           choices=MEMORY_MODES),
) + PREDICTION_OPTIONS + SAMPLING_OPTIONS + IMG2IMG_OPTIONS + FAST_PATH_OPTIONS + UI_OPTIONS + LDSR_OPTIONS \
    + EXTRA_NETWORK_OPTIONS


class Settings:
    """The current settings; thread-safe; persisted on every change."""

    def __init__(self, path: Path, options: Iterable[Option] = OPTIONS, data_dir: Path | None = None):
        self.path = Path(path)
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self.options = {option.key: option for option in options}
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        # override_settings of the request this thread is working on; never saved.
        self._overlay = threading.local()
        # Values a start flag fixes for this run (--theme, --api-log): read first, never saved.
        self._pinned: dict[str, Any] = {}
        # Keys users may not change, with the reason (a start flag such as --freeze-settings).
        self._locks: dict[str, str] = {}
        self._lock_all: str | None = None
        self.load_warning: str | None = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except (OSError, ValueError) as error:
            aside = self.path.with_name(f"{self.path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                self.path.replace(aside)
            except OSError:
                aside = None
            self.load_warning = (f"{self.path.name} could not be read ({error}); using defaults"
                                 + (f". The broken file was moved to {aside}" if aside else ""))
            log.warning(self.load_warning)
            return
        for key, value in data.items():
            option = self.options.get(key)
            if option is None:
                self._values[key] = value  # unknown keys are kept for whoever wrote them
                continue
            try:
                self._values[key] = option.accept(value, self.data_dir)
            except RequestError as error:
                log.warning("config.json: %s; using the default", error.message)

    @property
    def data_dir(self) -> Path:
        """The data folder (outputs/ is in it): what relative folder settings mean. By default
        the folder that holds config.json."""
        return self._data_dir if self._data_dir is not None else self.path.parent

    # Start flags

    def pin(self, values: dict[str, Any], reason: str) -> None:
        """Fix these values for this run (not saved; config.json keeps its own) and lock them."""
        coerced = self.validate(values)
        self._pinned.update(coerced)
        self.lock(coerced, reason)

    def lock(self, keys: Iterable[str] | None, reason: str) -> None:
        """Users may no longer change these settings (None: any setting); `reason` says why."""
        if keys is None:
            self._lock_all = reason
        else:
            self._locks.update({key: reason for key in keys})

    def locked_reason(self, key: str) -> str | None:
        return self._locks.get(key) or self._lock_all

    def changed_keys(self, changes: dict[str, Any]) -> list[str]:
        """The keys whose value would change (values compared after coercion; bad ones count)."""
        changed = []
        for key, value in changes.items():
            try:
                same = self.validate({key: value})[key] == self[key]
            except (RequestError, KeyError):
                same = False
            if not same:
                changed.append(key)
        return changed

    def check_editable(self, keys: Iterable[str]) -> None:
        """ForbiddenError naming the first key a start flag keeps users from changing."""
        for key in keys:
            reason = self.locked_reason(key)
            if reason:
                raise ForbiddenError(f"Setting {key} cannot be changed: {reason}", key)

    def __getitem__(self, key: str) -> Any:
        overlay = getattr(self._overlay, "values", None)
        if overlay and key in overlay:
            return overlay[key]
        if key in self._pinned:
            return self._pinned[key]
        with self._lock:
            if key in self._values:
                return self._values[key]
        return self.options[key].default

    def _current(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        option = self.options.get(key)
        return option.default if option else object()

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            values = {key: option.default for key, option in self.options.items()}
            values.update(self._values)
            values.update(self._pinned)
            return values

    def api_dict(self) -> dict[str, Any]:
        """What GET /sdapi/v1/options answers: every setting, after the defaults of the settings of
        the web UI whose client programs call it (read, never used here), so a client reading one
        of those finds its usual value."""
        return {**A1111_DEFAULTS, **self.as_dict()}

    def known(self, changes: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The changes split into those of settings this app has and the names of the others
        (settings of other web UIs, which client programs send along: accepted and ignored).
        More changes than any client sends at once, or a name longer than any setting's, are
        refused whole."""
        if len(changes) > MAX_CHANGES:
            raise TooLargeError(f"At most {MAX_CHANGES} settings can be changed at once, got {len(changes)}",
                                "settings")
        for key in changes:
            if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
                raise RequestError(f"A setting name is at most {MAX_KEY_CHARS} characters: {shown(key)}", "settings")
        known = {key: value for key, value in changes.items() if key in self.options}
        return known, [key for key in changes if key not in self.options]

    def validate(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Coerced values for known keys (unknown keys pass through unchanged)."""
        return {key: self.options[key].accept(value, self.data_dir) if key in self.options else value
                for key, value in changes.items()}

    @contextlib.contextmanager
    def overridden(self, changes: dict[str, Any]) -> Iterator[None]:
        """Within the block, this thread reads `changes` in place of the stored values; nothing
        is written to config.json and other threads see the stored values."""
        coerced = self.validate(self.known(changes)[0])
        before = getattr(self._overlay, "values", None)
        self._overlay.values = {**(before or {}), **coerced}
        try:
            yield
        finally:
            self._overlay.values = before

    def update(self, changes: dict[str, Any]) -> list[str]:
        """Validate all, then apply all and save; returns the keys whose value changed."""
        coerced = self.validate(changes)
        with self._lock:
            changed = [key for key, value in coerced.items() if self._current(key) != value]
            self._values.update(coerced)
            self._save_locked()
        return changed

    def _save_locked(self) -> None:
        data = json.dumps(self._values, indent=4, ensure_ascii=False).encode("utf-8")
        write_atomically(self.path, data)

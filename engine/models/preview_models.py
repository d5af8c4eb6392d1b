"""The decoders of the "TAESD" and "Approx NN" live previews: which file each model family uses,
finding it on disk, fetching it on first use, and keeping the loaded network.

As in the ecosystem's web UI, a file that is not there is downloaded the first time a job asks
for it: in the background, through the download catalogue (a `.part` file, resumed, checked
against the published checksum, renamed only then), while that job's previews are "Approx
cheap"; the next job uses the file. The job is told why once (a warning), and never fails for
it: no network, a refused or broken file all leave the cheap previews.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.errors import UserError
from engine.models.downloads import CatalogueDownloads
from engine.models.model_catalogue import CatalogueEntry
from engine.networks.preview_decoders import approx_nn_from_state_dict, read_state_dict, taesd_decoder_from_state_dict

log = logging.getLogger(__name__)

# The preview methods that need a decoder file, and the one used while it is missing (the
# show_progress_type values; engine/job_results.py lists them all).
APPROX_NN, TAESD, APPROX_CHEAP = "Approx NN", "TAESD", "Approx cheap"
DECODER_METHODS = (APPROX_NN, TAESD)

# (method, latent space) -> catalogue name. SD 2.x shares SD 1.x's VAE and so its decoders.
_ENTRIES = {
    (TAESD, "sd"): "TAESD decoder (SD 1.x, 2.x)",
    (TAESD, "sdxl"): "TAESD decoder (SDXL)",
    (APPROX_NN, "sd"): "Approx NN (SD 1.x, 2.x)",
    (APPROX_NN, "sdxl"): "Approx NN (SDXL)",
}
# Where else the web UI keeps these files (looked in after the catalogue's own folder).
_OTHER_FOLDERS = {TAESD: ("VAE-taesd",)}
_BUILD = {TAESD: taesd_decoder_from_state_dict, APPROX_NN: approx_nn_from_state_dict}


def latent_space(family: str) -> str | None:
    """Which VAE's latents a model family samples in ("sd" or "sdxl"); None: none we have
    preview decoders for."""
    if family in ("sd1", "sd2"):
        return "sd"
    if family.startswith("sdxl"):
        return "sdxl"
    return None


@dataclass(frozen=True)
class PreviewDecoder:
    """A loaded decoder: latents in the UNet's space to pixels in [-1, 1]."""

    method: str
    network: nn.Module

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        weight = next(self.network.parameters())
        return self.network(latents.to(weight.device, weight.dtype)).float()


class PreviewModels:
    """The preview decoder files in models/VAE-approx (and the web UI's models/VAE-taesd),
    loaded once per device and precision, fetched in the background when missing."""

    def __init__(self, downloads: CatalogueDownloads, folder_of: Callable[[str], Path]):
        self.downloads = downloads
        self.folder_of = folder_of
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, int, str, torch.dtype], PreviewDecoder] = {}
        self._fetching: dict[str, threading.Thread] = {}
        self._failed: dict[str, str] = {}  # catalogue name -> why its last download failed

    def entry(self, method: str, family: str) -> CatalogueEntry | None:
        space = latent_space(family)
        name = _ENTRIES.get((method, space)) if space else None
        return self.downloads.catalogue.get(name) if name else None

    def find(self, method: str, entry: CatalogueEntry) -> Path | None:
        folders = [self.folder_of(entry.folder)] + [self.folder_of(name) for name in _OTHER_FOLDERS.get(method, ())]
        for folder in folders:
            for name in entry.file_names:
                if (folder / name).is_file():
                    return folder / name
        return None

    def decoder(self, method: str, family: str, device: torch.device,
                dtype: torch.dtype) -> tuple[PreviewDecoder | None, str | None]:
        """The decoder for `method` on a model of `family`, or None and the reason (the job's
        warning) when the previews must be Approx cheap for now. Never blocks on a download."""
        entry = self.entry(method, family)
        if entry is None:
            return None, f"{method} previews have no decoder for this kind of model; {APPROX_CHEAP} previews instead."
        path = self.find(method, entry)
        if path is None:
            return None, self._missing(method, entry)
        key = (str(path), path.stat().st_mtime_ns, str(device), dtype)  # a replaced file is read again
        with self._lock:
            found = self._loaded.get(key)
        if found is not None:
            return found, None
        try:
            network = _BUILD[method](read_state_dict(path), path.name)
        except (UserError, RuntimeError, ValueError) as error:  # a preview never fails the job
            return None, f"{method} previews: {error}; {APPROX_CHEAP} previews instead."
        decoder = PreviewDecoder(method, network.to(device, dtype))
        with self._lock:
            return self._loaded.setdefault(key, decoder), None

    def _missing(self, method: str, entry: CatalogueEntry) -> str:
        where = f"models/{entry.folder}/{entry.filename}"
        with self._lock:
            failed = self._failed.get(entry.name)
        self._fetch_in_background(entry)
        if failed:
            return (f"{method} previews need {where}; the last try to download it failed ({failed}), so it is "
                    f"being tried again in the background. {APPROX_CHEAP} previews until it is there (or put the "
                    f"file there yourself).")
        return (f"{method} previews need {where} ({entry.size_label}); it is being downloaded in the background "
                f"and checked against its published checksum. {APPROX_CHEAP} previews until it is there.")

    def _fetch_in_background(self, entry: CatalogueEntry) -> None:
        """Start fetching the file unless a fetch of it is running."""
        with self._lock:
            running = self._fetching.get(entry.name)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(target=self._fetch, args=(entry,), name=f"preview-download {entry.filename}",
                                      daemon=True)
            self._fetching[entry.name] = thread
        thread.start()

    def _fetch(self, entry: CatalogueEntry) -> None:
        try:
            self.downloads.fetch(entry.name, wait=True)
        except (UserError, OSError) as error:  # no network, a refused file, a full disk
            log.warning("preview decoder %s not downloaded: %s", entry.filename, error)
            with self._lock:
                self._failed[entry.name] = str(error)
        else:
            with self._lock:
                self._failed.pop(entry.name, None)

    def wait_for_downloads(self, timeout: float | None = None) -> None:
        """Until the background downloads started so far have ended (for tests and shutdown)."""
        with self._lock:
            threads = list(self._fetching.values())
        for thread in threads:
            thread.join(timeout)

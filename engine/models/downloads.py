"""Downloading the standard model files of engine/models/model_catalogue.py (SD 1.5 for a user with no
checkpoint, the upscalers and face restorers the ecosystem's names stand for), verified before
they are used.

A file arrives as `<name>.part` (resumed if a previous try was cut off), its sha256 is checked
against the published one, and only then is it renamed into its models/ folder: a cut, a wrong
or a half-written file is never used.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import RequestError, UserError
from engine.models.model_catalogue import SD15_NAME, CatalogueEntry, ModelCatalogue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadOffer:
    label: str
    url: str
    filename: str
    sha256: str
    size_label: str
    git_blob_sha1: str = ""  # checked instead where no sha256 is published (sha256 "")

    def matches(self, path: Path, sha256: str) -> bool:
        """Whether the file at `path` (whose sha256 is given) is the published one."""
        if self.sha256 or not self.git_blob_sha1:
            return sha256 == self.sha256
        # Git's blob id: SHA-1 over a header with the size, then the bytes.
        digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
        return digest.hexdigest() == self.git_blob_sha1


def offer_of(entry: CatalogueEntry, catalogue: ModelCatalogue) -> DownloadOffer:
    return DownloadOffer(entry.name, catalogue.url(entry), entry.filename, entry.sha256, entry.size_label,
                         entry.git_blob_sha1)


def sd15_offer(endpoint: str | None = None) -> DownloadOffer:
    """The standard SD 1.5 checkpoint, from the Hub or a mirror (HF_ENDPOINT, as huggingface_hub
    uses it); the sha256 check makes a mirror as trustworthy as the original."""
    catalogue = ModelCatalogue(endpoints={"huggingface": endpoint})
    return offer_of(catalogue.get(SD15_NAME), catalogue)


SD15 = sd15_offer()

CHUNK = 1 << 20


class DownloadError(UserError):
    """The file could not be fetched, or was not the published one. The API answers 502 (Bad
    Gateway): the request was fine, the host behind this server failed it."""

    status = 502

    def __init__(self, message: str):
        super().__init__(message, None)


class ModelDownloader:
    """One offer, one destination folder; a download at a time."""

    def __init__(self, offer: DownloadOffer, dest_dir: Path, timeout: float = 30.0):
        self.offer = offer
        self.dest_dir = Path(dest_dir)
        self.timeout = timeout
        self._busy = threading.Lock()

    @property
    def target(self) -> Path:
        return self.dest_dir / self.offer.filename

    def reachable(self, timeout: float = 4.0) -> bool:
        """Whether the file's host answers at all (no network: the offer is not shown)."""
        request = urllib.request.Request(self.offer.url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return True
        except urllib.error.HTTPError as error:
            return error.code < 500
        except (OSError, ValueError):
            return False

    def download(self, progress: Callable[[int, int | None], None] | None = None,
                 cancel: threading.Event | None = None, wait: bool = False) -> Path:
        """The file, downloaded if it is not there yet. `wait`: if another download of it is
        running, wait for that one (then the file is there) instead of refusing."""
        if not self._busy.acquire(blocking=wait):
            raise DownloadError("A download is already running")
        try:
            return self._download(progress or (lambda done, total: None), cancel)
        finally:
            self._busy.release()

    def _download(self, progress, cancel) -> Path:
        if self.target.exists():
            return self.target
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        part = self.target.with_name(self.target.name + ".part")
        digest = hashlib.sha256()
        done = 0
        if part.exists():
            with open(part, "rb") as handle:
                for block in iter(lambda: handle.read(CHUNK), b""):
                    digest.update(block)
                    done += len(block)
        request = urllib.request.Request(self.offer.url)
        if done:
            request.add_header("Range", f"bytes={done}-")
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            if error.code != 416 or not done:
                raise DownloadError(f"The server refused the download: {error}") from error
            return self._finish(part, digest)  # 416: the part file already holds everything
        except (OSError, ValueError) as error:
            raise DownloadError(f"Could not reach {self.offer.url}: {error}") from error
        with response:
            if done and response.status != 206:  # server ignored the range: start over
                digest, done = hashlib.sha256(), 0
            length = response.headers.get("Content-Length")
            total = done + int(length) if length and length.isdigit() else None
            with open(part, "ab" if done else "wb") as handle:
                try:
                    done = self._stream(response, handle, digest, done, total, progress, cancel)
                finally:
                    handle.flush()
                    os.fsync(handle.fileno())
        if total is not None and done < total:
            raise DownloadError("The connection dropped before the end; try again to resume")
        return self._finish(part, digest)

    def _finish(self, part: Path, digest) -> Path:
        if not self.offer.matches(part, digest.hexdigest()):
            part.unlink(missing_ok=True)
            checksum = "sha256" if self.offer.sha256 else "git blob id"
            raise DownloadError(
                f"The downloaded file's {checksum} does not match the published one for "
                f"{self.offer.filename}; it was deleted. Try again.")
        os.replace(part, self.target)
        log.info("downloaded %s", self.target)
        return self.target

    @staticmethod
    def _stream(response, handle, digest, done: int, total: int | None, progress, cancel) -> int:
        while True:
            if cancel is not None and cancel.is_set():
                raise DownloadError("Download cancelled; it resumes where it stopped next time")
            try:
                block = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as error:
                raise DownloadError(f"The connection dropped ({error}); try again to resume") from error
            if not block:
                return done
            handle.write(block)
            digest.update(block)
            done += len(block)
            progress(done, total)


class CatalogueDownloads:
    """The catalogue's files, each downloaded into models/<its folder> on request; one download
    per file at a time. Only catalogue names are accepted, never a URL."""

    def __init__(self, catalogue: ModelCatalogue, models_dir: Path, timeout: float = 30.0,
                 folder_of: Callable[[str], Path] | None = None):
        """`folder_of`: a catalogue folder name to the folder in use (start flags may move some;
        default: inside `models_dir`)."""
        self.catalogue = catalogue
        self.models_dir = Path(models_dir)
        self.folder_of = folder_of or (lambda name: self.models_dir / name)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._downloaders: dict[str, ModelDownloader] = {}

    def downloader(self, name: str) -> ModelDownloader:
        entry = self.catalogue.get(name) if isinstance(name, str) else None
        if entry is None:
            raise RequestError(f"'{name}' is not a model this app downloads", "model")
        with self._lock:
            if name not in self._downloaders:
                self._downloaders[name] = ModelDownloader(offer_of(entry, self.catalogue),
                                                          self.folder_of(entry.folder), self.timeout)
            return self._downloaders[name]

    def fetch(self, name: str, progress: Callable[[int, int | None], None] | None = None,
              cancel: threading.Event | None = None, wait: bool = True) -> Path:
        return self.downloader(name).download(progress, cancel, wait=wait)

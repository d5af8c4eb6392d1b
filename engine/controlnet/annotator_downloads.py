"""Annotator weights fetched on first use, as the ControlNet extension fetches them: the files of
lllyasviel/Annotators (and, for segmentation, an ADE20K model folder) from the Hugging Face Hub
(HF_ENDPOINT names a mirror) into models/ControlNet/annotators/<the ecosystem's sub-folder>, and the
CLIP image encoders of IP-Adapter and style adapter units into annotators/clip_vision.

Only these repositories and file names are ever fetched, never a name a request sends.

The checksum: no list of these files' sha256 is published outside the Hub itself, so each file is
checked against the one the Hub publishes for it in its repository, read before the download: a
large (Git LFS) file's sha256 (the X-Linked-Etag header of the file's address), a small file's
git blob id (its ETag). The file arrives as `<name>.part` and is renamed into place only when it
matches (engine/models/downloads.py), so a cut, damaged or different file is never used.

Downloads happen when the `auto_download_models` setting allows them and HF_HUB_OFFLINE is not
set; otherwise the preprocessor is refused naming the files to put in place.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from engine.models.downloads import DownloadError, DownloadOffer, ModelDownloader

log = logging.getLogger(__name__)

ANNOTATORS_REPO = "lllyasviel/Annotators"
# The ADE20K segmentation model the seg preprocessor suggests; its weights under either name.
SEG_REPO = "openmmlab/upernet-convnext-small"
SEG_FILES = ("config.json", "preprocessor_config.json")
SEG_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# The CLIP image encoders IP-Adapter and style adapter units read pictures with, where the
# ControlNet extension fetches them from (as safetensors), saved as clip_vision/<kind>.safetensors.
ENCODER_SOURCES = {
    "clip_h": ("h94/IP-Adapter", "models/image_encoder/model.safetensors"),
    "clip_g": ("h94/IP-Adapter", "sdxl_models/image_encoder/model.safetensors"),
    "clip_vitl": ("openai/clip-vit-large-patch14", "model.safetensors"),
}
ENCODER_FOLDER = "clip_vision"
REVISION = "main"
_SHA256, _BLOB = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{40}")


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def file_url(repo: str, filename: str) -> str:
    return f"{hub_endpoint()}/{repo}/resolve/{REVISION}/{urllib.parse.quote(filename)}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None   # the redirect itself carries the checksum headers


class NotPublished(DownloadError):
    """The Hub has no such file (404)."""


def _etag(value: str | None) -> str:
    value = (value or "").strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()


def published_offer(repo: str, filename: str, timeout: float = 15.0, save_as: str | None = None) -> DownloadOffer:
    """The file's address and the checksum the Hub publishes for it (a HEAD request); it is saved
    under its own name or `save_as`."""
    url = file_url(repo, filename)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            headers = response.headers
    except urllib.error.HTTPError as answer:
        if answer.code == 404:
            raise NotPublished(f"{repo} has no file {filename}") from answer
        if not 300 <= answer.code < 400:
            raise DownloadError(f"{hub_endpoint()} refused {repo}/{filename}: {answer}") from answer
        headers = answer.headers
    except (OSError, ValueError) as error:
        raise DownloadError(f"Could not reach {hub_endpoint()} for {repo}/{filename}: {error}") from error
    linked = _etag(headers.get("X-Linked-Etag"))
    size = headers.get("X-Linked-Size") or headers.get("Content-Length") or ""
    size_label = f"{int(size) / 1e6:.0f} MB" if size.isdigit() else "size not published"
    if _SHA256.fullmatch(linked):
        return DownloadOffer(f"{repo}/{filename}", url, save_as or Path(filename).name, linked, size_label)
    plain = _etag(headers.get("ETag"))
    if not linked and _BLOB.fullmatch(plain):
        return DownloadOffer(f"{repo}/{filename}", url, save_as or Path(filename).name, "", size_label,
                             git_blob_sha1=plain)
    raise DownloadError(f"{hub_endpoint()} publishes no checksum for {repo}/{filename}, so it is not downloaded")


@dataclass(frozen=True)
class Wanted:
    """Files a preprocessor needs: from `repo`, into `folder` (under annotators/); `choices`: one
    of these names is enough (the first the Hub has)."""
    repo: str
    folder: str
    files: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()


class AnnotatorFetcher:
    """Downloads annotator files, one download per file at a time (a second job wanting the same
    file waits for the first)."""

    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        self._lock = threading.Lock()
        self._busy: dict[Path, threading.Lock] = {}

    def fetch(self, wanted: Wanted, annotators: Path) -> list[Path]:
        """The files in place, downloading those missing; DownloadError names what failed."""
        folder = Path(annotators) / wanted.folder
        paths = [self._one(wanted.repo, name, folder) for name in wanted.files]
        if wanted.choices and not any((folder / name).is_file() for name in wanted.choices):
            for name in wanted.choices:
                try:
                    paths.append(self._one(wanted.repo, name, folder))
                    break
                except NotPublished:
                    continue
            else:
                raise DownloadError(f"{wanted.repo} has none of {', '.join(wanted.choices)}")
        return paths

    def encoder(self, kind: str, annotators: Path) -> Path:
        """The CLIP image encoder `kind` downloaded into annotators/clip_vision/<kind>.safetensors."""
        repo, name = ENCODER_SOURCES[kind]
        return self._one(repo, name, Path(annotators) / ENCODER_FOLDER, f"{kind}.safetensors")

    def _one(self, repo: str, name: str, folder: Path, save_as: str | None = None) -> Path:
        target = folder / (save_as or Path(name).name)
        with self._lock:
            busy = self._busy.setdefault(target, threading.Lock())
        with busy:
            if target.is_file():
                return target
            offer = published_offer(repo, name, save_as=save_as)
            log.info("a preprocessor needs %s: downloading it from %s (%s) into %s", name, repo,
                     offer.size_label, folder)
            return ModelDownloader(offer, folder, self.timeout).download(wait=True)


def encoder_path(controlnet_folder: Path, kind: str, fetcher: AnnotatorFetcher, may_download: bool) -> Path:
    """The CLIP image encoder `kind`'s file or folder in the ControlNet folders, downloaded on
    first use where `may_download` (RequestError naming what to put where otherwise)."""
    from engine.controlnet import ip_adapter
    from engine.errors import RequestError

    try:
        return ip_adapter.find_encoder(controlnet_folder, kind)
    except RequestError:
        if not (may_download and kind in ENCODER_SOURCES):
            raise
    repo, name = ENCODER_SOURCES[kind]
    folder = Path(controlnet_folder) / "annotators"
    try:
        return fetcher.encoder(kind, folder)
    except DownloadError as error:
        raise DownloadError(
            f"The {ip_adapter.ENCODER_LABELS[kind]} image encoder ({repo}, {name}) could not be downloaded: "
            f"{error.message.rstrip('.')}. You can put it as {kind}.safetensors into "
            f"{folder / ENCODER_FOLDER} yourself.") from error

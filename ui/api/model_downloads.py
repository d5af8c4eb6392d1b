"""API requests that name a standard model not downloaded yet: with the `auto_download_models`
setting on, the file is fetched (from the catalogue only, verified) and the request is run;
otherwise the 409 naming the file to put where goes back to the client."""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from engine.models.downloads import DownloadError
from engine.engine import Engine
from engine.models.model_catalogue import ModelNotDownloaded
from engine.settings.store import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def with_downloads(engine: Engine, settings: Settings, action: Callable[[], T]) -> T:
    """`action()`, after downloading each standard model it is refused for (one at a time: a
    request may need an upscaler and a face restorer)."""
    fetched: set[str] = set()
    while True:
        try:
            return action()
        except ModelNotDownloaded as missing:
            pending = [entry for entry in missing.entries if entry.name not in fetched]
            if not settings["auto_download_models"] or not pending:
                raise
            for entry in pending:
                log.info("an API request needs %s: downloading %s into models/%s", entry.name,
                         entry.filename, entry.folder)
                try:
                    engine.addons.downloads.fetch(entry.name)
                except DownloadError as error:
                    raise DownloadError(f"'{entry.name}' could not be downloaded: {error.message.rstrip('.')}. "
                                        f"You can put {entry.filename} into models/{entry.folder} "
                                        f"yourself.") from error
                fetched.add(entry.name)

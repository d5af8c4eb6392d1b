"""Image inputs that check an upload before Gradio decodes it.

Gradio opens an uploaded picture itself, before our handler runs. A 0-byte file, a truncated PNG,
text renamed to .png or a decompression bomb then fails inside Gradio, and the user sees a bare
"Error". These components run the same checks as the API (engine/uploads.py) first and turn a
failure into a message that names the field and the problem.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Callable

import gradio as gr
from gradio.data_classes import FileData

from engine.errors import RequestError
from engine.settings import Settings
from engine.uploads import open_image

# Read at upload time, so a change in Settings applies at once.
LimitSource = Callable[[], float]


def _bytes_of(source, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    url = getattr(source, "url", None) or ""
    if url.startswith("data:"):  # a pasted picture arrives inline
        try:
            return base64.b64decode(url.partition(",")[2])
        except (binascii.Error, ValueError) as error:
            raise gr.Error(f"{name}: the pasted picture is not valid base64 ({error})") from error
    path = getattr(source, "path", None)
    if not path:
        raise gr.Error(f"{name}: the upload did not arrive; upload the picture again")
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise gr.Error(f"{name}: the upload could not be read ({error.strerror}); upload it again") from error


def check_upload(source, name: str, limit_megapixels: float) -> None:
    """Raise gr.Error naming `name` unless `source` (FileData or bytes) is a readable picture
    within the pixel limit."""
    data = _bytes_of(source, name)
    try:
        open_image(data, name, limit_megapixels).close()
    except RequestError as error:
        raise gr.Error(error.message) from error


def _limit(settings: Settings) -> LimitSource:
    return lambda: float(settings["upload_max_megapixels"])


class CheckedImage(gr.Image):
    # A template of gr.Image: the page draws it with Image's own front end.
    is_template = True
    limit_megapixels: LimitSource = staticmethod(lambda: 16.0)

    def preprocess(self, payload):
        if payload is not None:
            check_upload(payload, self.label or "Image", self.limit_megapixels())
        return super().preprocess(payload)


class CheckedImageEditor(gr.ImageEditor):
    is_template = True
    limit_megapixels: LimitSource = staticmethod(lambda: 16.0)

    def convert_and_format_image(self, file, flatten_on_white: bool = False):
        # Called for the background, each layer and the composite the browser sends.
        if isinstance(file, (bytes, bytearray, memoryview, FileData)):
            check_upload(file, self.label or "Image", self.limit_megapixels())
        return super().convert_and_format_image(file, flatten_on_white=flatten_on_white)


def image(settings: Settings, **kwargs) -> CheckedImage:
    """gr.Image(**kwargs) whose uploads are checked against `upload_max_megapixels`."""
    component = CheckedImage(**kwargs)
    component.limit_megapixels = _limit(settings)
    return component


def image_editor(settings: Settings, **kwargs) -> CheckedImageEditor:
    component = CheckedImageEditor(**kwargs)
    component.limit_megapixels = _limit(settings)
    return component

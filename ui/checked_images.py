"""Image inputs that check an upload before Gradio decodes it.

Gradio opens an uploaded picture itself, before our handler runs. A 0-byte file, a truncated PNG,
text renamed to .png or a decompression bomb then fails inside Gradio, and the user sees a bare
"Error". These components run the same checks as the API (engine/runs/uploads.py) first, as soon as
the file arrives: a bad upload is taken out of the field again (no broken preview is left) and
one message under the field names it and the problem. A bad picture that reaches a handler all
the same counts as no picture, so no event fails on it (one error toast per event used to pile up).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Callable

import gradio as gr
from gradio.data_classes import FileData

from engine.errors import RequestError
from engine.settings.store import Settings
from engine.runs.uploads import open_image

from .markdown_text import literal

# Far above any picture the pixel limit lets through; only a guard against reading a huge file.
MAX_UPLOAD_BYTES = 512 << 20
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
    upload = _uploaded_file(Path(path))
    if upload is None:
        # A path the browser did not upload (a crafted request naming a file on the server):
        # never opened, and nothing said about whether it exists.
        raise gr.Error(f"{name}: the upload did not arrive; upload the picture again")
    try:
        with open(upload, "rb") as handle:
            data = handle.read(MAX_UPLOAD_BYTES + 1)
    except OSError as error:
        raise gr.Error(f"{name}: the upload could not be read ({error.strerror}); upload it again") from error
    if len(data) > MAX_UPLOAD_BYTES:
        raise gr.Error(f"{name}: the file is larger than {MAX_UPLOAD_BYTES >> 20} MB; upload a smaller picture")
    return data


def _uploaded_file(path: Path) -> Path | None:
    """`path` if it is a regular file inside Gradio's upload folder (symlinks resolved)."""
    from gradio.utils import get_upload_folder

    try:
        resolved, folder = path.resolve(), Path(get_upload_folder()).resolve()
    except (OSError, RuntimeError):
        return None
    if folder not in resolved.parents or not resolved.is_file():
        return None
    return resolved


def check_upload(source, name: str, limit_megapixels: float) -> None:
    """Raise gr.Error naming `name` unless `source` (FileData or bytes) is a readable picture
    within the pixel limit."""
    data = _bytes_of(source, name)
    try:
        open_image(data, name, limit_megapixels).close()
    except RequestError as error:
        raise gr.Error(error.message) from error


def upload_problem(source, name: str, limit_megapixels: float) -> str | None:
    """What is wrong with an upload (the message names `name`), or None when it is a picture."""
    try:
        check_upload(source, name, limit_megapixels)
    except gr.Error as error:
        return error.message
    return None


def _limit(settings: Settings) -> LimitSource:
    return lambda: float(settings["upload_max_megapixels"])


class CheckedImage(gr.Image):
    # A template of gr.Image: the page draws it with Image's own front end.
    is_template = True
    limit_megapixels: LimitSource = staticmethod(lambda: 16.0)

    def preprocess(self, payload):
        if payload is not None and upload_problem(payload, self.label or "Image", self.limit_megapixels()):
            return None  # said under the field when it was uploaded (see _check_when_uploaded)
        return super().preprocess(payload)


class CheckedImageEditor(gr.ImageEditor):
    is_template = True
    limit_megapixels: LimitSource = staticmethod(lambda: 16.0)

    def convert_and_format_image(self, file, flatten_on_white: bool = False):
        # Called for the background, each layer and the composite the browser sends. (The
        # editor's front end itself drops a file it cannot draw, so only other clients get here.)
        if isinstance(file, (bytes, bytearray, memoryview, FileData)):
            check_upload(file, self.label or "Image", self.limit_megapixels())
        return super().convert_and_format_image(file, flatten_on_white=flatten_on_white)


def image(settings: Settings, **kwargs) -> CheckedImage:
    """gr.Image(**kwargs) whose uploads are checked against `upload_max_megapixels`, with the
    line under it that says what was wrong with a refused one."""
    component = CheckedImage(**kwargs)
    component.limit_megapixels = _limit(settings)
    _check_when_uploaded(component)
    return component


def _check_when_uploaded(component: CheckedImage) -> None:
    elem_id = f"{component.elem_id}_upload_message" if component.elem_id else None
    note = gr.Markdown("", elem_id=elem_id, elem_classes=["message"])

    def checked(payload):
        """The raw upload (not decoded: that is what could fail): refused ones leave the field."""
        if payload is None:
            return gr.update(), ""
        try:
            upload = FileData.model_validate(payload)
        except ValueError:
            upload = None
        problem = upload_problem(upload, component.label or "Image", component.limit_megapixels())
        if problem:
            return None, literal(problem)
        return gr.update(), ""

    private = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}
    component.upload(checked, inputs=component, outputs=[component, note], preprocess=False, **private)
    component.clear(lambda: "", outputs=note, **private)


def image_editor(settings: Settings, **kwargs) -> CheckedImageEditor:
    """gr.ImageEditor(**kwargs) whose uploads are checked: in the browser before the editor draws
    them (ui/assets/editor_upload_check.js writes what was wrong into the line under it), and
    here for other clients. Laid out in a column with that line (`scale` is the column's)."""
    classes = kwargs.pop("elem_classes", None) or []
    with gr.Column(scale=kwargs.pop("scale", 1), min_width=kwargs.pop("min_width", 160)):
        component = CheckedImageEditor(elem_classes=[*classes, "checked-editor"], **kwargs)
        component.limit_megapixels = _limit(settings)
        if component.elem_id:
            gr.Markdown("", elem_id=f"{component.elem_id}_upload_message", elem_classes=["message"])
    return component

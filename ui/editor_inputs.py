"""What the img2img sub-tabs' image editors hold, as an init image and a mask.

gr.ImageEditor gives {"background", "layers", "composite"}: the uploaded picture, the user's
stroke layers (RGBA, transparent where nothing was drawn) and everything flattened together.
"""

from __future__ import annotations

from PIL import Image, ImageChops

from engine.errors import RequestError
from engine.image_prep import flatten


def _image(value, what: str) -> Image.Image:
    if isinstance(value, dict):
        value = value.get("composite") or value.get("background")
    if not isinstance(value, Image.Image):
        raise RequestError(f"No {what}: upload a picture (or draw one) first", "init_images")
    return value


def strokes_mask(layers, size: tuple[int, int]) -> Image.Image:
    """White wherever any layer has paint (its alpha), black elsewhere."""
    mask = Image.new("L", size, 0)
    for layer in layers or []:
        if not isinstance(layer, Image.Image) or layer.mode not in ("RGBA", "LA"):
            continue
        alpha = layer.getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        mask = ImageChops.lighter(mask, alpha.point(lambda v: 255 if v > 0 else 0))
    return mask


def sketch_input(value) -> Image.Image:
    """Sketch: the drawing over the picture (or a white canvas) is the init image."""
    return flatten(_image(value, "sketch"))


def inpaint_input(value) -> tuple[Image.Image, Image.Image]:
    """Inpaint: the picture under the strokes, and the strokes as the mask."""
    if not isinstance(value, dict) or not isinstance(value.get("background"), Image.Image):
        raise RequestError("No picture to inpaint: upload one, then paint over the part to change",
                           "init_images")
    background = value["background"]
    return flatten(background), strokes_mask(value.get("layers"), background.size)


def inpaint_sketch_input(value) -> tuple[Image.Image, Image.Image]:
    """Inpaint sketch: the coloured strokes are both the new content and the mask."""
    composite = flatten(_image(value, "picture to inpaint"))
    return composite, strokes_mask(value.get("layers") if isinstance(value, dict) else None,
                                   composite.size)


def upload_input(image, mask) -> tuple[Image.Image, Image.Image | None]:
    """Inpaint upload: a picture and a separate mask file (white = repaint)."""
    if not isinstance(image, Image.Image):
        raise RequestError("No picture to inpaint: upload one", "init_images")
    if not isinstance(mask, Image.Image):
        raise RequestError("No mask: upload a mask image (white where the picture should change)",
                           "mask")
    return flatten(image), mask

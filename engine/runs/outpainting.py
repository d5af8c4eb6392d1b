"""The Outpainting script: grow the canvas on chosen sides and inpaint the new area.

It turns an img2img request into an inpainting request on a bigger canvas; the job itself is an
ordinary inpainting job.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from engine.runs import image_prep
from engine.errors import RequestError
from engine.request import MAX_SIZE, GenerationRequest


def margins(request: GenerationRequest) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixels to add."""
    pixels, sides = request.outpaint_pixels, set(request.outpaint_directions)
    return tuple(pixels if side in sides else 0 for side in ("left", "up", "right", "down"))


def expand(request: GenerationRequest) -> GenerationRequest:
    """The request as inpainting on the grown canvas; unchanged when there is nothing to grow."""
    left, top, right, bottom = margins(request)
    if not (left or top or right or bottom) or not request.init_images:
        return request
    width, height = request.width + left + right, request.height + top + bottom
    if width > MAX_SIZE or height > MAX_SIZE:
        raise RequestError(
            f"Outpainting would make a {width}x{height} image; the largest is {MAX_SIZE}x{MAX_SIZE}. "
            "Expand by fewer pixels or on fewer sides, or lower the width/height.", "outpaint_pixels")
    images = tuple(
        _grow(image_prep.resize_image(image_prep.flatten(image), request.resize_mode,
                                      request.width, request.height), left, top, right, bottom)
        for image in request.init_images)
    return request.replace(
        init_images=images, mask=_new_area_mask(request, width, height),
        width=width, height=height, resize_mode=image_prep.JUST_RESIZE,
        inpaint_full_res=False, inpainting_mask_invert=False, outpaint_pixels=0,
        outpaint_directions=())


def _grow(image: Image.Image, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """The image on a bigger canvas whose new area repeats the nearest edge pixels (a start the
    masked-content modes then work on)."""
    pixels = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="edge")
    return Image.fromarray(pixels, "RGB")


def _new_area_mask(request: GenerationRequest, width: int, height: int) -> Image.Image:
    """White over the new area and a seam of twice the blur into the old picture on grown sides,
    so the blur blends the join instead of cutting into the new content."""
    left, top, right, bottom = margins(request)
    seam = 2 * request.mask_blur
    mask = Image.new("L", (width, height), 255)
    keep = (left + (seam if left else 0), top + (seam if top else 0),
            width - right - (seam if right else 0), height - bottom - (seam if bottom else 0))
    if keep[0] < keep[2] and keep[1] < keep[3]:
        ImageDraw.Draw(mask).rectangle((keep[0], keep[1], keep[2] - 1, keep[3] - 1), fill=0)
    return mask

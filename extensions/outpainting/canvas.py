"""The grown canvas and its mask: the picture on a bigger canvas whose new area repeats the edge
pixels, and a mask over the new area with a seam into the old picture for the blur."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from engine.errors import RequestError
from engine.request import MAX_SIZE, GenerationRequest
from engine import image_prep

DIRECTIONS = ("left", "right", "up", "down")
MAX_PIXELS = 512


def margins(options) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixels to add."""
    pixels, sides = int(options["pixels"]), set(options["directions"])
    return tuple(pixels if side in sides else 0 for side in ("left", "up", "right", "down"))


def expand(request: GenerationRequest, options, size_only: bool = False):
    """The request as inpainting on the grown canvas (or only the grown size)."""
    left, top, right, bottom = margins(options)
    width, height = request.width + left + right, request.height + top + bottom
    if width > MAX_SIZE or height > MAX_SIZE:
        raise RequestError(
            f"Outpainting would make a {width}x{height} image; the largest is {MAX_SIZE}x{MAX_SIZE}. "
            "Expand by fewer pixels or on fewer sides, or lower the width/height.", "script_args")
    if size_only:
        return width, height
    part = request.img2img
    images = tuple(
        _grow(image_prep.resize_image(image_prep.flatten(image), part.resize_mode,
                                      request.width, request.height), left, top, right, bottom)
        for image in part.init_images)
    return request.with_img2img(
        init_images=images, mask=_new_area_mask(options, width, height),
        resize_mode=image_prep.JUST_RESIZE, mask_blur=int(options["mask_blur"]),
        inpainting_fill=image_prep.MASKED_CONTENT.index(options["inpainting_fill"]),
        inpaint_full_res=False, inpainting_mask_invert=False).replace(width=width, height=height)


def _grow(image: Image.Image, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """The image on a bigger canvas whose new area repeats the nearest edge pixels (a start the
    masked-content modes then work on)."""
    pixels = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="edge")
    return Image.fromarray(pixels, "RGB")


def _new_area_mask(options, width: int, height: int) -> Image.Image:
    """White over the new area and a seam of twice the blur into the old picture on grown sides,
    so the blur blends the join instead of cutting into the new content."""
    left, top, right, bottom = margins(options)
    seam = 2 * int(options["mask_blur"])
    mask = Image.new("L", (width, height), 255)
    keep = (left + (seam if left else 0), top + (seam if top else 0),
            width - right - (seam if right else 0), height - bottom - (seam if bottom else 0))
    if keep[0] < keep[2] and keep[1] < keep[3]:
        ImageDraw.Draw(mask).rectangle((keep[0], keep[1], keep[2] - 1, keep[3] - 1), fill=0)
    return mask

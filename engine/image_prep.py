"""Pixel work around img2img and inpainting: resize modes, masks, the "only masked" crop, the
"fill" masked content, and pasting results back onto the original.

Everything here is plain PIL/numpy on RGB images and "L" masks (255 = repaint), so it can be
tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter, ImageOps

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_UPSCALE = range(4)
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)
INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
BACKGROUND = (255, 255, 255)  # what transparent parts of an upload become


def flatten(image: Image.Image, background=BACKGROUND) -> Image.Image:
    """RGB, with any transparency composited over the background colour."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


# An upscaler for pictures to be enlarged: (image, width, height) -> image of about that size.
Upscale = Callable[[Image.Image, int, int], Image.Image]


def resize_image(image: Image.Image, mode: int, width: int, height: int,
                 upscale: Upscale | None = None) -> Image.Image:
    """The image at width x height, framed as the resize mode says; `upscale` (the
    upscaler_for_img2img setting) enlarges a colour picture before the final Lanczos fit."""
    if mode in (JUST_RESIZE, LATENT_UPSCALE):
        return _resize(image, width, height, upscale)
    src_w, src_h = image.size
    fit_width = (width / height > src_w / src_h) == (mode == CROP_AND_RESIZE)
    if fit_width:
        new_w, new_h = width, max(1, round(src_h * width / src_w))
    else:
        new_w, new_h = max(1, round(src_w * height / src_h)), height
    resized = _resize(image, new_w, new_h, upscale)
    canvas = Image.new(image.mode, (width, height))
    left, top = (width - new_w) // 2, (height - new_h) // 2
    canvas.paste(resized, (left, top))
    if mode == RESIZE_AND_FILL:
        _stretch_edges(canvas, resized, left, top)
    return canvas


def _resize(image: Image.Image, width: int, height: int, upscale: Upscale | None = None) -> Image.Image:
    if image.size == (width, height):
        return image.copy()
    if upscale is not None and image.mode != "L" and max(width / image.width, height / image.height) > 1:
        image = upscale(image, width, height)
        if image.size == (width, height):
            return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _stretch_edges(canvas: Image.Image, resized: Image.Image, left: int, top: int) -> None:
    """Fill the bands around a centred image by stretching its outermost rows or columns."""
    width, height = canvas.size
    new_w, new_h = resized.size
    if top > 0:
        canvas.paste(resized.crop((0, 0, new_w, 1)).resize((new_w, top)), (left, 0))
    if top + new_h < height:
        band = height - top - new_h
        canvas.paste(resized.crop((0, new_h - 1, new_w, new_h)).resize((new_w, band)), (left, top + new_h))
    if left > 0:
        canvas.paste(resized.crop((0, 0, 1, new_h)).resize((left, new_h)), (0, top))
    if left + new_w < width:
        band = width - left - new_w
        canvas.paste(resized.crop((new_w - 1, 0, new_w, new_h)).resize((band, new_h)), (left + new_w, top))


def binary_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A user's mask as black/white "L" at `size` (white = repaint).

    A mask with real transparency is read from its alpha (a painted layer); otherwise from its
    brightness. A mask of another size is stretched to the image, not refused.
    """
    if mask.mode in ("RGBA", "LA") and mask.getchannel("A").getextrema()[0] < 255:
        gray = mask.getchannel("A")
    else:
        gray = mask.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    return gray.point(lambda v: 255 if v >= 128 else 0)


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def is_empty(mask: Image.Image) -> bool:
    return mask.getextrema()[1] == 0


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int]:
    """The box around the painted part of the mask, grown by `padding` pixels, inside the image."""
    box = mask.getbbox()
    if box is None:
        return (0, 0) + mask.size
    x1, y1, x2, y2 = box
    width, height = mask.size
    return max(0, x1 - padding), max(0, y1 - padding), min(width, x2 + padding), min(height, y2 + padding)


def match_aspect(box: tuple[int, int, int, int], target_w: int, target_h: int,
                 image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """Grow the box's short side so it has the target's aspect ratio (centred, moved back inside
    the image where it would leave it), so the crop scales to the target without distortion."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if w * target_h < h * target_w:
        w = min(image_w, round(h * target_w / target_h))
    else:
        h = min(image_h, round(w * target_h / target_w))
    x1 = _place(x1, x2, w, image_w)
    y1 = _place(y1, y2, h, image_h)
    return x1, y1, x1 + w, y1 + h


def _place(start: int, end: int, size: int, limit: int) -> int:
    centre = (start + end) / 2
    return int(min(max(0, round(centre - size / 2)), limit - size))


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Replace the masked area with colours spread in from around it ("fill" masked content).

    Normalised convolution at shrinking scales: each pass averages the known colours nearby,
    coarse passes cover large holes, fine passes bring back local colour near the edge.
    """
    from scipy.ndimage import gaussian_filter

    pixels = np.asarray(image, dtype=np.float32)
    weight = np.asarray(mask, dtype=np.float32) / 255.0
    known = (weight < 0.5).astype(np.float32)
    if known.sum() == 0:
        return image.copy()
    filled = np.empty_like(pixels)
    filled[:] = (pixels * known[..., None]).sum((0, 1)) / known.sum()
    for sigma in (64, 16, 4, 1):
        spread = gaussian_filter(known, sigma)
        colour = np.stack([gaussian_filter(pixels[..., c] * known, sigma) for c in range(3)], -1)
        reached = spread > 1e-3
        filled[reached] = colour[reached] / spread[reached, None]
    out = pixels * (1 - weight[..., None]) + filled * weight[..., None]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


@dataclass
class InitImage:
    """One init image, ready for the model, with what is needed to put the result back."""

    image: Image.Image                    # RGB at the processing size
    overlay: Image.Image | None = None    # RGBA original, opaque where it must be kept
    paste_box: tuple[int, int, int, int] | None = None  # only masked: where the crop came from
    base: Image.Image | None = None       # only masked: the full original to paste into

    def restore(self, result: Image.Image) -> Image.Image:
        """The generated image, put back in place, with the kept area of the original on top."""
        if self.paste_box is not None and self.base is not None:
            x1, y1, x2, y2 = self.paste_box
            full = self.base.copy()
            full.paste(result.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
            result = full
        if self.overlay is None:
            return result
        out = result.convert("RGBA")
        out.alpha_composite(self.overlay)
        return out.convert("RGB")


@dataclass
class PreparedMask:
    processing: Image.Image          # "L" at the processing size, blurred: what the model repaints
    overlay: Image.Image             # "L" at the output size: where the result shows through
    crop: tuple[int, int, int, int] | None = None

    def latent(self, scale: int = 8) -> np.ndarray:
        """1 where the model repaints, 0 where it keeps, one value per latent pixel."""
        width, height = self.processing.size
        # A1111 shrinks the blurred mask with PIL's default (bicubic) filter, then rounds.
        small = self.processing.resize((width // scale, height // scale), Image.Resampling.BICUBIC)
        return np.round(np.asarray(small, dtype=np.float32) / 255.0)

    def pixels(self) -> np.ndarray:
        """The same decision per image pixel (for an inpainting model's masked image)."""
        return np.round(np.asarray(self.processing, dtype=np.float32) / 255.0)


def prepare_mask(mask: Image.Image, image_size: tuple[int, int], width: int, height: int, *,
                 invert: bool, blur: int, only_masked: bool, padding: int,
                 resize_mode: int) -> PreparedMask:
    """The user's mask made ready: binarised, inverted if asked, blurred, cropped or resized."""
    binary = binary_mask(mask, image_size)
    if invert:
        binary = ImageOps.invert(binary)
    blurred = blur_mask(binary, blur)
    if only_masked:
        box = match_aspect(crop_region(blurred, padding), width, height, *image_size)
        processing = resize_image(blurred.crop(box), RESIZE_AND_FILL, width, height)
        return PreparedMask(processing, blurred, box)
    processing = resize_image(blurred, resize_mode, width, height)
    # Whole picture: the result shows through a little more than the model's mask, so the blur
    # softens the seam instead of half-showing the original over the new content.
    overlay = processing.point(lambda v: min(255, v * 2))
    return PreparedMask(processing, overlay)


def prepare_init(image: Image.Image, width: int, height: int, resize_mode: int,
                 mask: PreparedMask | None, masked_content: int, upscale: Upscale | None = None) -> InitImage:
    """One init image at the processing size, with its overlay when there is a mask."""
    image = flatten(image)
    if mask is not None and mask.crop is not None:
        overlay = _overlay(image, mask.overlay)
        cropped = resize_image(image.crop(mask.crop), RESIZE_AND_FILL, width, height, upscale)
        prepared = InitImage(cropped, overlay, mask.crop, image)
    else:
        resized = resize_image(image, resize_mode, width, height, upscale if resize_mode != LATENT_UPSCALE else None)
        if resize_mode == LATENT_UPSCALE and mask is None:
            # The model sees the image at (nearly) its own size; the latents are scaled later.
            # (With a mask the pixels must line up with it, so it is resized like "Just resize".)
            source = _resize(image, max(8, image.width // 8 * 8), max(8, image.height // 8 * 8))
        else:
            source = resized
        prepared = InitImage(source, _overlay(resized, mask.overlay) if mask else None)
    if mask is not None and masked_content == FILL and prepared.image.size == mask.processing.size:
        prepared.image = fill_masked(prepared.image, mask.processing)
    return prepared


def _overlay(image: Image.Image, mask: Image.Image) -> Image.Image:
    overlay = image.convert("RGBA")
    overlay.putalpha(ImageOps.invert(mask))
    return overlay

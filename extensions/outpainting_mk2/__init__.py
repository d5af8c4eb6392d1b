"""Outpainting mk2 (img2img): grow the picture on the chosen sides and paint the new area.

As the mature UI's script does it: the uploaded picture (at its own size) grows by "Pixels to
expand" on each chosen side, the total width and height rounded up to multiples of 64 (the extra
shared between opposite sides). One side at a time (left, right, up, down), the grown canvas is
filled with noise matched to the picture (matched_noise.py: its spectrum, with the fall-off
exponent and the colour variation) over the new area and a seam of "Mask blur" pixels into the
old one, and a strip at that side is inpainted from it ("original" masked content, the mask
blurred by 4 x Mask blur, at most 64): as wide as the tab's width allows for left and right
(the picture's whole height), as tall as the tab's height allows for up and down (its whole
width). The result has the grown size; the old picture away from the seams is kept.

Every side's job uses the same seed (batch count: the next seeds); the fill's noise follows the
seed too, so a seed gives the same picture again. The pictures come back (and are saved) at the
grown size, with a grid when there are several; each carries the infotext of its first side's job.

API (script_name "Outpainting mk2"): script_args = [info (ignored), pixels, mask_blur, direction
(a list of "left"/"right"/"up"/"down"), noise_q, color_variation]."""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from engine.errors import RequestError
from engine.extensions import Field, Script, ScriptHost
from engine.request import MAX_MASK_BLUR, MAX_SIZE, SIZE_STEP
from engine.image_prep import JUST_RESIZE, ORIGINAL, flatten

from .matched_noise import matched_noise

SEED_RANGE = 2**32
DIRECTIONS = ("left", "right", "up", "down")  # also the order the sides are grown in
GRID_STEP = 64   # the grown picture's sides are multiples of this, as in the mature UI
MIN_SIDE = 64    # the smallest picture a job makes
BLUR_FACTOR = 4  # the job's mask blur is this many times the seam


def _round_up(value: int, step: int = GRID_STEP) -> int:
    return math.ceil(value / step) * step


def expansion(width: int, height: int, pixels: int, directions: Sequence[str]) -> dict[str, int]:
    """Pixels to add on each side of a width x height picture: `pixels` on each chosen side, the
    grown width and height rounded up to multiples of 64 with the extra shared between the two
    sides of each axis (the first one getting its share rounded down)."""
    sides = {side: pixels if side in directions else 0 for side in DIRECTIONS}
    for first, second, size in (("left", "right", width), ("up", "down", height)):
        if not (sides[first] or sides[second]):
            continue
        extra = _round_up(size + sides[first] + sides[second]) - size
        if sides[first]:
            sides[first] = sides[first] * extra // (sides[first] + sides[second])
        if sides[second]:
            sides[second] = extra - sides[first]
    return sides


def grown_size(width: int, height: int, sides: dict[str, int]) -> tuple[int, int]:
    return width + sides["left"] + sides["right"], height + sides["up"] + sides["down"]


def _job_side(limit: int, grown: int, canvas: int) -> int:
    """A strip's length along the grown axis: what the tab's size allows, in steps of 8."""
    return min(canvas, max(MIN_SIDE, min(limit, grown) // SIZE_STEP * SIZE_STEP))


def side_canvas(image: Image.Image, side: str, amount: int, seam: int, limit_w: int, limit_h: int):
    """For growing `image` by `amount` on `side`: (canvas, mask, strip box, grown size). The
    canvas is the grown picture (sides rounded up to 64, the old picture in place, the rest
    black); the mask is white but over the old picture less a `seam` on the grown side; the
    strip is the part the job inpaints."""
    width, height = image.size
    horizontal = side in ("left", "right")
    grown = (width + amount, height) if horizontal else (width, height + amount)
    canvas_w, canvas_h = _round_up(grown[0]), _round_up(grown[1])
    x = amount if side == "left" else 0
    y = amount if side == "up" else 0
    canvas = Image.new("RGB", (canvas_w, canvas_h))
    canvas.paste(image, (x, y))
    keep = [x, y, x + width, y + height]
    if side == "left":
        keep[0] += seam
    elif side == "right":
        keep[2] -= seam
    elif side == "up":
        keep[1] += seam
    else:
        keep[3] -= seam
    mask = Image.new("L", (canvas_w, canvas_h), 255)
    if keep[0] < keep[2] and keep[1] < keep[3]:
        ImageDraw.Draw(mask).rectangle((keep[0], keep[1], keep[2] - 1, keep[3] - 1), fill=0)
    if horizontal:
        strip_w = _job_side(limit_w, grown[0], canvas_w)
        box = (0, 0, strip_w, canvas_h) if side == "left" else (canvas_w - strip_w, 0, canvas_w, canvas_h)
    else:
        strip_h = _job_side(limit_h, grown[1], canvas_h)
        box = (0, 0, canvas_w, strip_h) if side == "up" else (0, canvas_h - strip_h, canvas_w, canvas_h)
    return canvas, mask, box, grown


def filled(canvas: Image.Image, mask: Image.Image, noise_q: float, colour_variation: float,
           seed: int) -> Image.Image:
    """The canvas with the masked area filled by matched noise from this seed."""
    pixels = matched_noise(np.asarray(canvas, dtype=np.float64) / 255.0,
                           np.asarray(mask, dtype=np.float64) / 255.0, noise_q, colour_variation,
                           np.random.default_rng(seed))
    return Image.fromarray(np.round(pixels * 255.0).astype(np.uint8), "RGB")


class OutpaintingMk2(Script):
    name = "outpainting_mk2"
    title = "Outpainting mk2"
    order = 38  # after Loopback, before the plain Outpainting (the mature UI's order)
    modes = ("img2img",)
    fields = (
        Field("info", "Information", "", kind="text", in_ui=False),  # the mature UI's note: no value
        Field("pixels", "Pixels to expand", 128, kind="slider", minimum=8, maximum=256, step=8),
        Field("mask_blur", "Mask blur", 8, kind="slider", minimum=0, maximum=64, step=1),
        Field("direction", "Outpainting direction", list(DIRECTIONS), kind="multiselect",
              choices=DIRECTIONS),
        Field("noise_q", "Fall-off exponent (lower=higher detail)", 1.0, kind="slider", minimum=0.0,
              maximum=4.0, step=0.01),
        Field("color_variation", "Color variation", 0.05, kind="slider", minimum=0.0, maximum=1.0, step=0.01),
    )
    description = ("Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: "
                   "0.8. Grows the uploaded picture at its own size; the grown sides are rounded up "
                   "to multiples of 64.")

    def options_from_args(self, args: Sequence[Any], mode: str) -> dict[str, Any]:
        options = super().options_from_args(args, mode)
        options.pop("info", None)  # the first value stands for the note above the fields
        return options

    def _plan(self, request, options) -> tuple[dict[str, int], tuple[int, int]]:
        width, height = request.img2img.init_images[0].size
        sides = expansion(width, height, int(options["pixels"]), options["direction"])
        return sides, grown_size(width, height, sides)

    def check(self, request, options) -> None:
        if not options["direction"]:
            raise RequestError("Outpainting mk2: choose at least one direction (left, right, up, down)",
                               "script_args")
        if request.active_controlnet_units:
            raise RequestError("ControlNet units cannot be used with Outpainting mk2 (its strips do not "
                               "line up with the control image)", "controlnet_units")
        if request.img2img is None or not request.img2img.init_images:
            return  # the request's own check names the missing picture
        _, (width, height) = self._plan(request, options)
        if max(width, height) > MAX_SIZE:
            raise RequestError(f"Outpainting mk2 would make a {width}x{height} picture; the largest is "
                               f"{MAX_SIZE}x{MAX_SIZE}. Expand by fewer pixels or on fewer sides, or "
                               "upload a smaller picture.", "script_args")

    def estimate(self, request, options) -> str | None:
        if request.img2img is None or not request.img2img.init_images or not options["direction"]:
            return None
        sides, (width, height) = self._plan(request, options)
        jobs = sum(1 for amount in sides.values() if amount) * request.n_iter
        return f"{width}x{height}, {jobs} inpainting job{'s' if jobs != 1 else ''}"

    def run(self, request, options, host: ScriptHost):
        sides, (width, height) = self._plan(request, options)
        seam = int(options["mask_blur"])
        first_seed = request.seed if request.seed != -1 else random.randrange(SEED_RANGE - 1)
        steps = [(side, amount) for side, amount in sides.items() if amount]
        host.plan(len(steps) * request.n_iter)
        picture = flatten(request.img2img.init_images[0])
        finals, texts, seeds, firsts, made = [], [], [], [], []
        for batch in range(request.n_iter):
            seed = (first_seed + batch * request.batch_size) % SEED_RANGE
            images, first = [picture] * request.batch_size, None
            for number, (side, amount) in enumerate(steps, 1):
                host.note(f"Outpainting mk2: {side} ({number} of {len(steps)}), batch {batch + 1} of "
                          f"{request.n_iter}")
                images, result = self._grow(images, side, amount, seam, request, options, seed, host)
                made.append(result)
                first = result if first is None else first
                if host.interrupted:
                    break
            if images[0].size != (width, height):
                break  # interrupted before the last side: a picture half grown is not kept
            firsts.append(first)
            finals += images
            texts += [first.infotexts[n] if n < len(first.infotexts) else "" for n in range(len(images))]
            seeds += [first.seeds[n] if n < len(first.seeds) else seed + n for n in range(len(images))]
            if host.interrupted:
                break
        if not finals:  # interrupted in the first batch: what its jobs made
            return host.result(request, made)
        paths = [host.save_image(image, request.replace(seed=image_seed, width=width, height=height), text)
                 for image, text, image_seed in zip(finals, texts, seeds)]
        grid = host.grid(finals) if len(finals) > 1 else None
        return host.result(request.replace(width=width, height=height), firsts, images=finals,
                           infotexts=texts, seeds=seeds, paths=paths, grid=grid)

    def _grow(self, images, side, amount, seam, request, options, seed, host):
        """Grow each picture of a batch on one side: fill, inpaint the strip, paste it back."""
        canvases, mask, box, grown = [], None, None, None
        for number, image in enumerate(images):
            canvas, mask, box, grown = side_canvas(image, side, amount, seam, request.width, request.height)
            canvases.append(filled(canvas, mask, options["noise_q"], options["color_variation"],
                                   (seed + number) % SEED_RANGE))
        job = request.with_img2img(
            init_images=tuple(canvas.crop(box) for canvas in canvases), mask=mask.crop(box),
            resize_mode=JUST_RESIZE, mask_blur=min(MAX_MASK_BLUR, BLUR_FACTOR * seam),
            inpainting_fill=ORIGINAL, inpaint_full_res=False, inpainting_mask_invert=False,
        ).replace(width=box[2] - box[0], height=box[3] - box[1], batch_size=len(images), n_iter=1,
                  seed=seed, save_grid=False)
        result = host.process(job, save=False)
        grown_images = []
        for canvas, made in zip(canvases, result.images):
            canvas.paste(made, box[:2])
            grown_images.append(canvas.crop((0, 0, *grown)))
        return (grown_images if len(grown_images) == len(images) else images), result


script = OutpaintingMk2()

"""Outpainting (the mature UI's "Poor man's outpainting"): grow the canvas on the chosen sides
and inpaint the new area, as one ordinary inpainting job on the bigger canvas."""

from __future__ import annotations

from engine.extensions import Field, Script
from engine.errors import RequestError
from engine.image_prep import MASKED_CONTENT

from .canvas import DIRECTIONS, MAX_PIXELS, expand


class Outpainting(Script):
    name = "outpainting"
    title = "Outpainting"
    aliases = ("poor man's outpainting",)
    order = 40
    modes = ("img2img",)
    fields = (
        Field("pixels", "Pixels to expand", 128, kind="slider", minimum=8, maximum=MAX_PIXELS, step=8),
        Field("mask_blur", "Mask blur", 4, kind="slider", minimum=0, maximum=64, step=1),
        Field("inpainting_fill", "Masked content", "fill", kind="radio", choices=MASKED_CONTENT),
        Field("directions", "Outpainting direction", list(DIRECTIONS), kind="multiselect", choices=DIRECTIONS),
    )
    description = ("Grows the picture by the pixels asked on the chosen sides and inpaints the new area "
                   "(the seam is blended by the mask blur).")

    def options_from_args(self, args, mode):
        """[pixels, mask_blur, masked content (name or index), directions]."""
        if isinstance(args, (list, tuple)) and len(args) >= 3:
            fill = args[2]
            if isinstance(fill, int) and not isinstance(fill, bool):
                if not 0 <= fill < len(MASKED_CONTENT):
                    raise RequestError(f"script_args: masked content index {fill} out of range; choose one "
                                       f"of: {', '.join(MASKED_CONTENT)}", "script_args")
                args = [*args[:2], MASKED_CONTENT[fill], *args[3:]]
            elif isinstance(fill, str) and fill not in MASKED_CONTENT:
                raise RequestError(f"script_args: unknown masked content '{fill}'. Choose one of: "
                                   f"{', '.join(MASKED_CONTENT)}", "script_args")
        return super().options_from_args(args, mode)

    def check(self, request, options):
        if options["pixels"] % 8:
            raise RequestError(f"Outpainting: pixels to expand must be a multiple of 8, got {options['pixels']}",
                               "script_args")
        if not options["directions"]:
            raise RequestError("Outpainting: choose at least one side to expand", "script_args")
        expand(request, options)  # too big a canvas is refused before the job waits in the queue

    def estimate(self, request, options):
        grown = expand(request, options, size_only=True)
        return f"{request.width}x{request.height} grows to **{grown[0]}x{grown[1]}**"

    def run(self, request, options, host):
        done = host.process(expand(request, options))
        return host.result(request, [done])


script = Outpainting()

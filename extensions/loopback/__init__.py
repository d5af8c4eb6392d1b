"""Loopback (img2img): each loop's picture is the next loop's input. The denoising strength
starts at the tab's and moves to "Final denoising strength" along the chosen curve, as the
mature UI computes it: after loop i (from 0) of n, the next loop uses

    start + (final - start) x f(p),  p = (i + 1) / (n - 1)

with f(p) = p (Linear), sin(p x pi/2) (Aggressive: most of the change early) or
1 - cos(p x pi/2) (Lazy: most of it late); one loop keeps the tab's strength. Each loop's seed is
the previous loop's + 1. Batch count runs that many whole chains, each from the uploaded
picture (batch size is 1). With one chain every loop's picture comes back, with a grid of them
in a row; with several, the last picture of each chain and their grid.

"Append interrogated prompt" CLIP adds a caption of each loop's input to the prompt (the
Interrogate button's captioner); DeepBooru is not available here and is refused.

Colour correction (the img2img_color_correction setting) corrects each loop towards the picture
that loop starts from, which is the previous loop's already corrected picture; the mature UI
corrects every loop towards the uploaded picture.

API (script_name "Loopback"): script_args = [loops, final_denoising_strength, denoising_curve
("Aggressive"/"Linear"/"Lazy"), append_interrogation ("None"/"CLIP"/"DeepBooru")]."""

from __future__ import annotations

import math
import random

from engine.errors import RequestError
from engine.extensions import Field, Script, ScriptHost
from engine.image_prep import ORIGINAL

SEED_RANGE = 2**32
CURVES = ("Aggressive", "Linear", "Lazy")
INTERROGATORS = ("None", "CLIP")  # the mature UI's "DeepBooru" is refused by name (check)


def strength_for_loop(loop: int, loops: int, start: float, final: float, curve: str) -> float:
    """The denoising strength of loop `loop` (0: the first, which uses `start`) of `loops`."""
    if loops == 1:
        return start
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        shape = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        shape = 1 - math.cos(progress * math.pi * 0.5)
    else:
        shape = progress
    return start + (final - start) * shape


class Loopback(Script):
    name = "loopback"
    title = "Loopback"
    order = 36  # after the X/Y/Z plot, before the outpainting scripts (the mature UI's order)
    modes = ("img2img",)
    fields = (
        Field("loops", "Loops", 4, kind="slider", minimum=1, maximum=32, step=1),
        Field("final_denoising_strength", "Final denoising strength", 0.5, kind="slider",
              minimum=0.0, maximum=1.0, step=0.01),
        Field("denoising_curve", "Denoising strength curve", "Linear", kind="dropdown", choices=CURVES,
              info="Aggressive: most of the change in the first loops; Lazy: in the last ones"),
        Field("append_interrogation", "Append interrogated prompt at each iteration", "None",
              kind="dropdown", choices=INTERROGATORS, strict=False,
              info="CLIP: a caption of each loop's input"),
    )
    description = ("Runs img2img again on its own result, loop after loop, the denoising strength "
                   "moving to the final one along the curve. DeepBooru tagging is not available.")

    def check(self, request, options) -> None:
        if options["append_interrogation"] == "DeepBooru":
            raise RequestError("Loopback: DeepBooru interrogation is not supported here (this app has no "
                               "DeepBooru tagger); choose CLIP or None", "script_args")
        if options["append_interrogation"] not in INTERROGATORS:
            raise RequestError(f"Loopback: Append interrogated prompt must be one of {list(INTERROGATORS)}, "
                               f"got {options['append_interrogation']!r}", "script_args")
        if int(options["loops"]) != options["loops"]:
            raise RequestError(f"Loopback: Loops must be a whole number, got {options['loops']}", "script_args")

    def estimate(self, request, options) -> str | None:
        loops, chains = int(options["loops"]), request.n_iter
        images = loops if chains == 1 else chains
        return f"{loops * chains} img2img jobs, {images} image{'s' if images != 1 else ''}"

    def run(self, request, options, host: ScriptHost):
        loops, chains = int(options["loops"]), request.n_iter
        start, final = request.img2img.denoising_strength, options["final_denoising_strength"]
        curve, interrogation = options["denoising_curve"], options["append_interrogation"]
        seed = request.seed if request.seed != -1 else random.randrange(SEED_RANGE - 1)
        host.plan(loops * chains)
        kept, last_made = [], None
        for chain in range(chains):
            init, strength, fill = request.img2img.init_images, start, request.img2img.inpainting_fill
            last = None
            for loop in range(loops):
                host.note(f"Loopback: loop {loop + 1} of {loops}, batch {chain + 1} of {chains}")
                prompt = request.prompt
                if interrogation == "CLIP":
                    prompt = (f"{request.prompt}, " if request.prompt else "") + host.interrogate(init[0])
                job = request.with_img2img(init_images=init, denoising_strength=strength, inpainting_fill=fill) \
                    .replace(prompt=prompt, seed=seed, batch_size=1, n_iter=1, save_grid=False)
                result = host.process(job)
                last_made = result
                if host.interrupted:
                    break
                seed = (result.seeds[0] + 1) % SEED_RANGE if result.seeds else (seed + 1) % SEED_RANGE
                strength = strength_for_loop(loop + 1, loops, start, final, curve)
                last = result
                init = (result.images[0],)
                fill = ORIGINAL  # later loops start from the picture as it is
                if chains == 1:
                    kept.append(result)
            if chains > 1 and last is not None and not host.interrupted:
                kept.append(last)
            if host.interrupted:
                break
        if not kept:  # interrupted in the first loop: what it made
            return host.result(request, [last_made])
        grid = host.grid([r.images[0] for r in kept], rows=1) if len(kept) > 1 else None
        return host.result(request, kept, grid=grid)


script = Loopback()

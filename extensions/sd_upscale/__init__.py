"""The SD upscale script: upscale a picture, cut it into overlapping tiles of the request's size,
redraw each tile with img2img (seed + tile index), and blend the tiles back with feathered seams.
The result is one picture of the scaled size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.errors import RequestError
from engine.extensions import Field, Script
from engine.output import infotext
from engine.request import MAX_SIZE
from engine.image_prep import flatten
from engine.runs.seeds import fixed_seed

from .tiles import feather, tile_starts


class SdUpscale(Script):
    name = "sd_upscale"
    title = "SD upscale"
    order = 50
    modes = ("img2img",)
    description = ("Tiles are the width and height above; the picture is upscaled first, then each tile "
                   "is redrawn with img2img and the tiles are blended.")
    catalog = None

    def attach(self, catalog):
        self.catalog = catalog

    def fields_for(self, mode):
        upscalers = tuple(self.catalog.upscaler_names()) if self.catalog else ("Lanczos",)
        return (
            Field("info", "(unused)", "", kind="text", in_ui=False),
            Field("overlap", "Tile overlap", 64, kind="slider", minimum=0, maximum=256, step=16),
            # A standard model's file name selects it too: check() names a wrong one.
            Field("upscaler", "Upscaler", "Lanczos", kind="radio", choices=upscalers, strict=False),
            Field("scale", "Scale factor", 2.0, kind="slider", minimum=1.0, maximum=4.0, step=0.05),
        )

    def options_from_args(self, args, mode):
        """[unused, overlap, upscaler (name or index), scale]."""
        args = list(args) if isinstance(args, (list, tuple)) else args
        if isinstance(args, list) and len(args) >= 3:
            upscaler = args[2]
            names = self.catalog.upscaler_names() if self.catalog else []
            if isinstance(upscaler, int) and not isinstance(upscaler, bool):
                if not 0 <= upscaler < len(names):
                    raise RequestError(f"script_args: upscaler index {upscaler} out of range; upscalers: "
                                       f"{', '.join(names)}", "script_args")
                args[2] = names[upscaler]
            elif isinstance(upscaler, str) and self.catalog is not None:
                args[2] = self.catalog.check_upscaler(upscaler)  # a standard model's file name works too
        options = super().options_from_args(args, mode)
        options.pop("info", None)
        return options

    def check(self, request, options):
        options.pop("info", None)
        if self.catalog is not None:
            options["upscaler"] = self.catalog.check_upscaler(options["upscaler"])
        if request.img2img is not None and request.img2img.is_inpaint:
            raise RequestError("SD upscale works on the whole picture: clear the mask, or use "
                               "plain img2img", "script_name")
        if request.controlnet_units and any(unit.enabled for unit in request.controlnet_units):
            raise RequestError("ControlNet units cannot be used with the SD upscale script (its "
                               "tiles do not line up with the control image)", "controlnet_units")
        if options["overlap"] > min(request.width, request.height) // 2:
            raise RequestError(f"SD upscale: tile overlap must be at most half the tile "
                               f"({min(request.width, request.height) // 2}), got {options['overlap']}",
                               "script_args")
        self._size(request, options)

    @staticmethod
    def _size(request, options) -> tuple[int, int]:
        source = request.img2img.init_images[0]
        width, height = round(source.width * options["scale"]), round(source.height * options["scale"])
        if width > MAX_SIZE * 4 or height > MAX_SIZE * 4:
            raise RequestError(f"SD upscale would make a {width}x{height} picture; the largest is "
                               f"{MAX_SIZE * 4} on a side", "script_args")
        return max(width, request.width), max(height, request.height)

    def estimate(self, request, options):
        if request.img2img is None or not request.img2img.init_images:
            return None
        width, height = self._size(request, options)
        tiles = len(tile_starts(width, request.width, options["overlap"])) * \
            len(tile_starts(height, request.height, options["overlap"]))
        return f"{tiles} tiles of {request.width}x{request.height} make a {width}x{height} picture"

    def run(self, request, options, host):
        big = host.upscale(flatten(request.img2img.init_images[0]), options["upscaler"],
                           *self._size(request, options))
        tile_w, tile_h, overlap = request.width, request.height, int(options["overlap"])
        xs, ys = tile_starts(big.width, tile_w, overlap), tile_starts(big.height, tile_h, overlap)
        seed = fixed_seed(request.seed)
        total = np.zeros((big.height, big.width, 3))
        weight = np.zeros((big.height, big.width, 1))
        host.plan(len(xs) * len(ys))
        done = []
        for index, (y, x) in enumerate((y, x) for y in ys for x in xs):
            if host.interrupted:
                break
            host.note(f"SD upscale: tile {index + 1} of {len(xs) * len(ys)}")
            tile = big.crop((x, y, x + tile_w, y + tile_h))
            # Per-tile tiling or face restoration would break the blend: no extensions here.
            part = host.process(request.with_img2img(init_images=(tile,), mask=None, resize_mode=0)
                                .replace(seed=seed + index, batch_size=1, n_iter=1, extensions={}),
                                save=False)
            done.append(part)
            if not part.images:
                break
            weights = feather(tile_w, tile_h, overlap)
            total[y:y + tile_h, x:x + tile_w] += np.asarray(part.images[0], dtype=np.float64) * weights
            weight[y:y + tile_h, x:x + tile_w] += weights
        covered = np.where(weight > 0, total / np.maximum(weight, 1e-8), np.asarray(big, dtype=np.float64))
        image = Image.fromarray(np.clip(covered + 0.5, 0, 255).astype(np.uint8), "RGB")
        text = self._infotext(done, request, options, seed)
        image.info[infotext.INFOTEXT_KEY] = text
        path = host.save_image(image, request.replace(seed=seed), text)
        return host.result(request.replace(seed=seed), done, images=[image], infotexts=[text],
                           seeds=[seed], subseeds=[request.subseed], paths=[path])

    @staticmethod
    def _infotext(done, request, options, seed: int) -> str:
        """The first tile's infotext with the job's seed and the script's own keys."""
        first = done[0].infotexts[0] if done and done[0].infotexts else ""
        prompt, negative, params = infotext.parse(first) if first else (request.prompt, request.negative_prompt, {})
        params = {**params, "Seed": seed, "Denoising strength": request.img2img.denoising_strength}
        version = params.pop("Version", None)
        params.update({"SD upscale overlap": options["overlap"], "SD upscale upscaler": options["upscaler"],
                       "SD upscale scale": options["scale"]})
        if version is not None:
            params["Version"] = version
        return infotext.build(prompt, negative, params)


script = SdUpscale()

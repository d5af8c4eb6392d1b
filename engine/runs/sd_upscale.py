"""The SD upscale script: upscale a picture, cut it into overlapping tiles of the request's size,
run img2img on each tile (seed + tile index), and blend the tiles back with feathered seams.

The tiles are img2img passes inside one job, so the result is one picture of the scaled size.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from PIL import Image

from engine.output import infotext
from engine.errors import RequestError
from engine.postprocess.extras import UPSCALERS
from engine.output.filenames import ImageFields
from engine.runs.image_prep import flatten
from engine.runs.img2img import Img2ImgRun
from engine.job_results import GenerationResult, OutputPolicy, image_params
from engine.jobs import Job
from engine.request import MAX_SIZE, SIZE_STEP, GenerationRequest
from engine.runs.seeds import fixed_seed


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of `tile` pixels start so that they cover `length` with at least `overlap`."""
    if length <= tile:
        return [0]
    stride = max(SIZE_STEP, tile - overlap)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _feather(width: int, height: int, overlap: int) -> np.ndarray:
    """Weights rising from the tile's edges over the overlap, so neighbours blend smoothly."""
    def ramp(n: int) -> np.ndarray:
        edge = max(1, min(overlap, n // 2))
        distance = np.minimum(np.arange(n), np.arange(n)[::-1]) + 1
        return np.clip(distance / edge, 0.0, 1.0)
    return np.outer(ramp(height), ramp(width))[..., None]


class SdUpscaleRun:
    def __init__(self, job: Job, request: GenerationRequest, model, policy: OutputPolicy, addons):
        self.job, self.request, self.model, self.policy, self.addons = job, request, model, policy, addons

    def upscaled(self) -> Image.Image:
        request = self.request
        source = flatten(request.init_images[0])
        width = round(source.width * request.sd_upscale_scale)
        height = round(source.height * request.sd_upscale_scale)
        if width > MAX_SIZE * 4 or height > MAX_SIZE * 4:
            raise RequestError(f"SD upscale would make a {width}x{height} picture; the largest is "
                               f"{MAX_SIZE * 4} on a side", "sd_upscale_scale")
        size = (max(width, request.width), max(height, request.height))
        if request.sd_upscale_upscaler not in UPSCALERS:  # a model file
            return self.addons.upscalers.upscale(source, request.sd_upscale_upscaler, *size,
                                                 self.model.device, faults=self.addons.faults)
        return source.resize(size, UPSCALERS[request.sd_upscale_upscaler] or Image.Resampling.LANCZOS)

    def run(self, writer) -> GenerationResult:
        request = self.request
        big = self.upscaled()
        tile_w, tile_h, overlap = request.width, request.height, request.sd_upscale_overlap
        xs, ys = tile_starts(big.width, tile_w, overlap), tile_starts(big.height, tile_h, overlap)
        seed = fixed_seed(request.seed)
        total = np.zeros((big.height, big.width, 3))
        weight = np.zeros((big.height, big.width, 1))
        tile_text, notes = "", []
        for index, (y, x) in enumerate((y, x) for y in ys for x in xs):
            if self.job.interrupted:
                break
            self.job.textinfo = f"SD upscale: tile {index + 1} of {len(xs) * len(ys)}"
            tile = big.crop((x, y, x + tile_w, y + tile_h))
            tile_request = request.replace(
                init_images=(tile,), mask=None, seed=seed + index, batch_size=1, n_iter=1,
                resize_mode=0, sd_upscale_scale=0.0, save_images=False, save_grid=False,
                extensions={})  # per-tile tiling or face restoration would break the blend
            done = Img2ImgRun(self.job, tile_request, self.model, self.policy.inner_pass(),
                              self.addons).run(None)
            feather = _feather(tile_w, tile_h, overlap)
            total[y:y + tile_h, x:x + tile_w] += np.asarray(done.images[0], dtype=np.float64) * feather
            weight[y:y + tile_h, x:x + tile_w] += feather
            tile_text = tile_text or done.infotexts[0]
            notes += [note for note in done.warnings if note not in notes]  # e.g. decoded in tiles
        covered = np.where(weight > 0, total / np.maximum(weight, 1e-8), np.asarray(big, dtype=np.float64))
        image = Image.fromarray(np.clip(covered + 0.5, 0, 255).astype(np.uint8), "RGB")
        result = self._result(image, seed, tile_text, writer)
        result.warnings = notes
        return result

    def _result(self, image: Image.Image, seed: int, tile_text: str, writer) -> GenerationResult:
        request = self.request
        prompt, negative, _ = infotext.parse(tile_text) if tile_text else (request.prompt, request.negative_prompt, {})
        params = image_params(request, self.model, seed, request.subseed, {
            "Denoising strength": request.denoising_strength,
            "SD upscale overlap": request.sd_upscale_overlap,
            "SD upscale upscaler": request.sd_upscale_upscaler,
            "SD upscale scale": request.sd_upscale_scale,
        })
        text = infotext.build(prompt, negative, params)
        image.info[infotext.INFOTEXT_KEY] = text
        fields = ImageFields.of(request, self.model.info, seed, image, prompt, negative)
        path = writer.save_image(image, request.mode, seed, text, fields) if self.policy.save_images else None
        return GenerationResult(request.replace(seed=seed), self.model.info, [image], [seed],
                                [request.subseed], [text], [path], interrupted=self.job.interrupted,
                                job_timestamp=dt.datetime.now().strftime("%Y%m%d%H%M%S"),
                                prompt=prompt, negative_prompt=negative)

"""Extras: post-processing a finished picture (upscaling), saved under outputs/extras-images.

The picture keeps the generation parameters it came with (`parameters`); what extras did is
written beside them in an `extras` text chunk, as the ecosystem does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.memory import memory_guard
from engine.memory.memory_guard import FaultPlan
from engine.errors import RequestError
from engine.validation import Number
from engine.image_prep import CROP_AND_RESIZE, JUST_RESIZE, flatten, resize_image
from engine.output.writer import read_infotext

# Resampling upscalers; model upscalers (ESRGAN and the like) come with the extension loader.
UPSCALERS = {"None": None, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MAX_SCALE = 8.0
MAX_SIDE = 8192
EXTRAS_KEY = "extras"


@dataclass(frozen=True)
class ExtrasRequest:
    image: Image.Image
    upscaler: str = "Lanczos"
    scale: float = 2.0          # used when width/height are 0
    width: int = 0
    height: int = 0
    crop: bool = True           # resize to: crop to fit (else stretch)
    upscaler_2: str = "None"    # blended over the first upscaler's result...
    upscaler_2_visibility: float = 0.0  # ...this much (0: not used)
    # Face restoration after the upscale, each blended over the picture this much (0: not run),
    # in this order, as the ecosystem does.
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.5  # 0: CodeFormer changes the most, 1: the least
    face_detailer_visibility: float = 0.0

    def validate(self, known: tuple[str, ...] = tuple(UPSCALERS)) -> "ExtrasRequest":
        """`known`: the upscaler names that exist (the resampling ones and the models on disk)."""
        if not isinstance(self.image, Image.Image):
            raise RequestError("No image: upload the picture to post-process", "image")
        for name, value in (("upscaler", self.upscaler), ("upscaler_2", self.upscaler_2)):
            if value not in known:
                raise RequestError(f"Upscaler not found: '{value}'. Available: "
                                   f"{', '.join(known)}", name)
        for name in ("upscaler_2_visibility", "gfpgan_visibility", "codeformer_visibility",
                     "codeformer_weight", "face_detailer_visibility"):
            Number(0.0, 1.0).check(getattr(self, name), name)
        Number(1.0, MAX_SCALE).check(self.scale, "scale")
        width, height = self.target_size
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise RequestError(f"The result would be {width}x{height}; each side must be at most "
                               f"{MAX_SIDE}", "scale")
        return self

    @property
    def target_size(self) -> tuple[int, int]:
        if self.width > 0 and self.height > 0:
            return self.width, self.height
        return round(self.image.width * self.scale), round(self.image.height * self.scale)

    @property
    def params(self) -> str:
        if self.width > 0 and self.height > 0:
            resize = f"Postprocess upscale to: {self.width}x{self.height}, Postprocess crop to fit: {self.crop}"
        else:
            resize = f"Postprocess upscale by: {self.scale:g}"
        text = f"{resize}, Postprocess upscaler: {self.upscaler}"
        if self.second_upscaler_used:
            text += (f", Postprocess upscaler 2: {self.upscaler_2}, "
                     f"Postprocess upscaler 2 visibility: {self.upscaler_2_visibility:g}")
        if self.gfpgan_visibility > 0:
            text += f", GFPGAN visibility: {self.gfpgan_visibility:g}"
        if self.codeformer_visibility > 0:
            text += (f", CodeFormer visibility: {self.codeformer_visibility:g}, "
                     f"CodeFormer weight: {self.codeformer_weight:g}")
        if self.face_detailer_visibility > 0:
            text += f", Face restoration: Face detailer, Face restoration visibility: {self.face_detailer_visibility:g}"
        return text

    @property
    def second_upscaler_used(self) -> bool:
        return self.upscaler_2 != "None" and self.upscaler_2_visibility > 0


@dataclass
class ExtrasResult:
    image: Image.Image
    infotext: str | None        # the picture's own generation parameters, kept
    extras: str                 # what post-processing did
    path: Path | None = None


def upscale(request: ExtrasRequest, models=None, device="cpu", faults: FaultPlan | None = None) -> ExtrasResult:
    """`models`: an UpscalerLibrary for upscaler names that are model files; `faults`: the
    job's test plan of memory faults."""
    with memory_guard.stage("upscale", faults=faults):
        source = flatten(request.image)
        image = _upscaled(source, request, request.upscaler, models, device, faults)
        if request.second_upscaler_used:
            second = _upscaled(source, request, request.upscaler_2, models, device, faults)
            image = Image.blend(image, second.resize(image.size), request.upscaler_2_visibility)
    return ExtrasResult(image, read_infotext(request.image), request.params)


def _upscaled(source: Image.Image, request: ExtrasRequest, upscaler: str, models, device,
              faults: FaultPlan | None = None) -> Image.Image:
    width, height = request.target_size
    if upscaler not in UPSCALERS:  # a model file
        if request.width > 0 and request.height > 0 and request.crop:
            source = _crop_to_shape(source, width, height)
        return models.upscale(source, upscaler, width, height, device, faults=faults)
    method = UPSCALERS[upscaler]
    if method is None:
        return source.copy()
    if request.width > 0 and request.height > 0:
        mode = CROP_AND_RESIZE if request.crop else JUST_RESIZE
        return _resample(source, method, width, height, mode)
    return source.resize((width, height), method)


def _resample(image: Image.Image, method, width: int, height: int, mode: int) -> Image.Image:
    if method == Image.Resampling.LANCZOS:
        return resize_image(image, mode, width, height)
    # resize_image uses Lanczos; Nearest scales first, then frames the same way.
    src_w, src_h = image.size
    factor = max(width / src_w, height / src_h) if mode == CROP_AND_RESIZE else None
    if factor is None:
        return image.resize((width, height), method)
    scaled = image.resize((max(width, round(src_w * factor)), max(height, round(src_h * factor))), method)
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def _crop_to_shape(image: Image.Image, width: int, height: int) -> Image.Image:
    """The centre of the picture with the target's aspect ratio (crop to fit, before upscaling)."""
    scale = min(image.width / width, image.height / height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))

"""The img2img tab's values as requests: one per click, or one per picture in a batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from engine import image_prep
from engine.errors import RequestError
from engine.request import MAX_SIZE, MIN_SIZE, SIZE_STEP, GenerationRequest, Img2ImgOptions
from engine.runs.uploads import open_image

from . import editor_inputs
from .request_builder import common_fields, whole

SUBTABS = ("img2img", "Sketch", "Inpaint", "Inpaint sketch", "Inpaint upload", "Batch")
MASKED_SUBTABS = ("Inpaint", "Inpaint sketch", "Inpaint upload", "Batch")
RESIZE_TO, RESIZE_BY = "Resize to", "Resize by"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def init_and_mask(values: dict[str, Any]) -> tuple[Image.Image, Image.Image | None]:
    """The picture and mask of the active sub-tab (not Batch)."""
    sub = values["subtab"]
    if sub == "img2img":
        image = values.get("init_image")
        if not isinstance(image, Image.Image):
            raise RequestError("No image for img2img: upload one first", "init_images")
        return image_prep.flatten(image), None
    if sub == "Sketch":
        return editor_inputs.sketch_input(values.get("sketch")), None
    if sub == "Inpaint":
        return editor_inputs.inpaint_input(values.get("inpaint"))
    if sub == "Inpaint sketch":
        return editor_inputs.inpaint_sketch_input(values.get("inpaint_sketch"))
    if sub == "Inpaint upload":
        return editor_inputs.upload_input(values.get("upload_image"), values.get("upload_mask"))
    raise RequestError(f"Unknown img2img mode '{sub}'", "mode")


def scaled_size(image_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """"Resize by": the picture's size times the scale, on the size grid and within limits."""
    def snap(value: float) -> int:
        return int(min(MAX_SIZE, max(MIN_SIZE, round(value / SIZE_STEP) * SIZE_STEP)))
    return snap(image_size[0] * scale), snap(image_size[1] * scale)


def request_for(values: dict[str, Any], image: Image.Image, mask: Image.Image | None) -> GenerationRequest:
    fields = common_fields(values, "img2img")
    if values.get("resize_tab") == RESIZE_BY:
        fields["width"], fields["height"] = scaled_size(image.size, float(values.get("scale") or 1))
    part: dict[str, Any] = dict(
        init_images=(image,), mask=mask,
        resize_mode=image_prep.RESIZE_MODES.index(values["resize_mode"]),
        denoising_strength=values["denoising_strength"],
    )
    if mask is not None:
        part.update(
            mask_blur=whole(values["mask_blur"], "mask_blur"),
            inpainting_mask_invert=values["mask_mode"] == image_prep.MASK_MODES[1],
            inpainting_fill=image_prep.MASKED_CONTENT.index(values["inpainting_fill"]),
            inpaint_full_res=values["inpaint_area"] == image_prep.INPAINT_AREAS[1],
            inpaint_full_res_padding=whole(values["inpaint_full_res_padding"], "inpaint_full_res_padding"),
        )
    return GenerationRequest(**fields, img2img=Img2ImgOptions(**part)).validate()


def requests_from_ui(values: dict[str, Any], limit_megapixels: float
                     ) -> Iterator[tuple[str, GenerationRequest]]:
    """The job(s) of one click: ("", request), or (file name, request) per Batch picture."""
    if values["subtab"] != "Batch":
        image, mask = init_and_mask(values)
        yield "", request_for(values, image, mask)
        return
    for name, image, mask in batch_inputs(values, limit_megapixels):
        yield name, request_for(values, image, mask)


def batch_inputs(values: dict[str, Any], limit: float) -> Iterator[tuple[str, Image.Image, Image.Image | None]]:
    """(file name, picture, mask or None) for each batch picture, masks matched by file stem."""
    pictures = _files(values.get("batch_files"), values.get("batch_input_dir"), "input")
    masks = {Path(p).stem: p for p in _files(values.get("batch_mask_files"),
                                             values.get("batch_mask_dir"), "mask", required=False)}
    for path in pictures:
        image = _read(path, limit)
        mask_path = masks.get(Path(path).stem)
        yield Path(path).name, image, (_read(mask_path, limit, flat=False) if mask_path else None)


def _files(uploads, folder: str | None, what: str, required: bool = True) -> list[str]:
    paths = [str(getattr(f, "name", f)) for f in (uploads or [])]
    if folder and str(folder).strip():
        directory = Path(str(folder).strip()).expanduser()
        if not directory.is_dir():
            raise RequestError(f"Batch {what} folder not found: {directory}", f"batch_{what}_dir")
        paths += sorted(str(p) for p in directory.iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if required and not paths:
        raise RequestError("Batch: upload some pictures or give an input folder", "batch_files")
    return paths


def _read(path: str, limit: float, flat: bool = True) -> Image.Image:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise RequestError(f"Cannot read {Path(path).name}: {error.strerror}", "batch_files") from error
    image = open_image(data, Path(path).name, limit)
    return image_prep.flatten(image) if flat else image  # a mask may mean its transparency

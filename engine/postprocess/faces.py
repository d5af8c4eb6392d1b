"""Finding faces and restoring them.

Faces are found with OpenCV's Haar cascade (shipped inside opencv-python-headless 4.x, so no
download). Restorers:
  - "Face detailer" (built in, no extra weights): each face is redrawn with the loaded model as
    an inpainting pass at a higher resolution, then blended back with a feathered oval;
  - "GFPGAN", "CodeFormer": networks written here (engine/postprocess/face_models) that read the weight files
    users put in models/GFPGAN or models/Codeformer; listed as unavailable, with the reason, until
    a file is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from engine.memory import memory_guard
from engine.memory.memory_guard import FaultPlan
from engine.errors import RequestError
from engine.postprocess.face_models import KINDS, FaceDetector, FaceModelLibrary
from engine.request import GenerationRequest

FACE_DETAILER = "Face detailer"
RESTORERS = (FACE_DETAILER, *KINDS)


@dataclass(frozen=True)
class Restorer:
    name: str
    available: bool
    reason: str = ""
    missing_weights: bool = False  # only its weight file is missing (which can be downloaded)


def restorers(library: FaceModelLibrary) -> list[Restorer]:
    """Every restorer, with whether it can run here and, if not, why."""
    cv2_reason = "" if _cv2_ready() else "needs opencv-python-headless 4.x (pip install 'opencv-python-headless<5')"
    found = [Restorer(FACE_DETAILER, not cv2_reason, cv2_reason)]
    for name in KINDS:
        weights_reason = library.unavailable_reason(name)
        reason = cv2_reason or weights_reason
        found.append(Restorer(name, not reason, reason, missing_weights=bool(weights_reason) and not cv2_reason))
    return found


def _cv2_ready() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return Path(cv2.data.haarcascades, FaceDetector.FILE).is_file()


def detect_faces(image: Image.Image, min_size: int = 32,
                 detector: FaceDetector | None = None) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each frontal face, largest first. `detector`: one that keeps
    its cascade (the face library's); without one it is read for this call."""
    found = (detector or FaceDetector())(np.asarray(image.convert("L")), min_size)
    boxes = [(x, y, x + w, y + h) for x, y, w, h in found]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def _padded_square(box, size: tuple[int, int], padding: float = 0.25) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    side = int(max(x2 - x1, y2 - y1) * (1 + 2 * padding))
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    left = min(max(0, cx - side // 2), max(0, size[0] - side))
    top = min(max(0, cy - side // 2), max(0, size[1] - side))
    return left, top, min(size[0], left + side), min(size[1], top + side)


def oval_mask(size: tuple[int, int], inset: float = 0.12, feather: float = 0.06) -> Image.Image:
    """White oval inside the box, feathered at its edge (what is redrawn and blended back)."""
    width, height = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((width * inset, height * inset, width * (1 - inset), height * (1 - inset)), fill=255)
    soft = mask.filter(ImageFilter.GaussianBlur(max(1.0, feather * width)))
    return soft.point(lambda v: 0 if v < 8 else v)  # no faint tail reaching the box's corners


def detail_faces(image: Image.Image, request: GenerationRequest, strength: float, second_pass,
                 work_size: int = 512, faults: FaultPlan | None = None,
                 detector: FaceDetector | None = None) -> Image.Image:
    """The face detailer: each face redrawn by `second_pass` (an img2img request -> image).
    `faults`: the job's test plan of memory faults; `detector`: the face library's."""
    with memory_guard.stage("face_restore", faults=faults):
        return _detail_faces(image, request, strength, second_pass, work_size, detector)


def _detail_faces(image: Image.Image, request: GenerationRequest, strength: float, second_pass,
                  work_size: int, detector: FaceDetector | None) -> Image.Image:
    faces = detect_faces(image, detector=detector)
    if not faces:
        return image
    result = image.convert("RGB").copy()
    side = max(64, min(work_size, max(request.width, request.height)) // 8 * 8)
    for box in faces:
        crop_box = _padded_square(box, result.size)
        crop = result.crop(crop_box)
        mask = oval_mask((side, side))
        redrawn = second_pass(request.with_img2img(
            init_images=(crop.resize((side, side), Image.Resampling.LANCZOS),),
            mask=mask.point(lambda v: 255 if v > 0 else 0), mask_blur=4, inpainting_fill=1,
            inpaint_full_res=False, inpainting_mask_invert=False, denoising_strength=strength,
            resize_mode=0).replace(width=side, height=side))
        size = (crop_box[2] - crop_box[0], crop_box[3] - crop_box[1])
        result.paste(redrawn.resize(size, Image.Resampling.LANCZOS), crop_box[:2], oval_mask(size))
    return result


def check_restorer(name: str, library: FaceModelLibrary) -> None:
    for restorer in restorers(library):
        if restorer.name == name:
            if restorer.missing_weights:
                library.require(name)  # offers the download of the standard file
            if not restorer.available:
                raise RequestError(f"Face restorer '{name}' is not available: {restorer.reason}",
                                   "face_restoration_model")
            return
    raise RequestError(f"Unknown face restorer '{name}'. Known: {', '.join(RESTORERS)}",
                       "face_restoration_model")


def _aligned_box(box) -> tuple[int, int, int, int]:
    """The square around a detected face framed the way GFPGAN and CodeFormer were trained
    (whole head, eyes a little above the middle). Without landmarks this is an approximation of
    their 5-point alignment: the box is not rotated."""
    x1, y1, x2, y2 = box
    side = round(1.8 * max(x2 - x1, y2 - y1))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = round(cx - side / 2), round(cy - 0.55 * side)
    return left, top, left + side, top + side


def restore_with_model(image: Image.Image, library: FaceModelLibrary, name: str,
                       device: torch.device | str, fidelity: float = 0.5, visibility: float = 1.0,
                       faults: FaultPlan | None = None) -> Image.Image:
    """Each face through GFPGAN or CodeFormer at the network's size, pasted back with a soft
    oval, `visibility` of the way. `fidelity` is CodeFormer's weight (0: most restored).
    `faults`: the job's test plan of memory faults."""
    with memory_guard.stage("face_restore", faults=faults):
        return _restore_with_model(image, library, name, device, fidelity, visibility)


def _restore_with_model(image: Image.Image, library: FaceModelLibrary, name: str,
                        device: torch.device | str, fidelity: float, visibility: float) -> Image.Image:
    faces = detect_faces(image, detector=library.detector)
    if not faces or visibility <= 0:
        return image
    size = library.model(name).input_size
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = pixels.shape[:2]
    boxes = [_aligned_box(box) for box in faces]
    # Faces near an edge reach outside the picture: work on a copy padded with its edge pixels.
    pad = max(0, *(max(-b[0], -b[1], b[2] - width, b[3] - height) for b in boxes))
    canvas = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    for left, top, right, bottom in reversed(boxes):  # the largest face is pasted last, on top
        left, top, right, bottom = left + pad, top + pad, right + pad, bottom + pad
        crop = Image.fromarray(canvas[top:bottom, left:right].round().astype(np.uint8))
        face = torch.from_numpy(np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32))
        face = (face / 127.5 - 1.0).permute(2, 0, 1)[None]
        restored = library.restore(name, face, device, fidelity)[0]
        restored = ((restored.clamp(-1, 1) + 1.0) * 127.5).permute(1, 2, 0).round().byte().numpy()
        side = right - left
        back = np.asarray(Image.fromarray(restored).resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32)
        weight = np.asarray(oval_mask((side, side), inset=0.1, feather=0.08), dtype=np.float32)[..., None] / 255.0
        weight *= visibility
        region = canvas[top:bottom, left:right]
        canvas[top:bottom, left:right] = region * (1.0 - weight) + back * weight
    result = canvas[pad:pad + height, pad:pad + width].round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(result, "RGB")

"""Finding faces and restoring them.

Faces are found with OpenCV's Haar cascade (shipped inside opencv-python-headless 4.x, so no
download). Restorers:
  - "Face detailer" (built in, no extra weights): each face is redrawn with the loaded model as
    an inpainting pass at a higher resolution, then blended back with a feathered oval;
  - "GFPGAN", "CodeFormer": offered when their weights are in models/GFPGAN or models/Codeformer
    and their library is installed; otherwise listed as unavailable with the reason.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import RequestError
from .request import GenerationRequest

FACE_DETAILER = "Face detailer"
RESTORERS = (FACE_DETAILER, "GFPGAN", "CodeFormer")
_LIBRARIES = {"GFPGAN": ("gfpgan", "GFPGAN"), "CodeFormer": ("codeformer", "Codeformer")}


@dataclass(frozen=True)
class Restorer:
    name: str
    available: bool
    reason: str = ""


def restorers(models_dir: Path) -> list[Restorer]:
    """Every restorer, with whether it can run here and, if not, why."""
    found = [Restorer(FACE_DETAILER, _cv2_ready(), "" if _cv2_ready() else
                      "needs opencv-python-headless 4.x (pip install 'opencv-python-headless<5')")]
    for name, (module, folder) in _LIBRARIES.items():
        weights = sorted(Path(models_dir, folder).glob("*.pth")) + sorted(Path(models_dir, folder).glob("*.safetensors"))
        if importlib.util.find_spec(module) is None:
            found.append(Restorer(name, False, f"the '{module}' library is not installed"))
        elif not weights:
            found.append(Restorer(name, False, f"no weights in models/{folder}"))
        else:
            found.append(Restorer(name, False, "its loader is not wired in this version"))
    return found


def _cv2_ready() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return Path(cv2.data.haarcascades, "haarcascade_frontalface_default.xml").is_file()


@functools.lru_cache(maxsize=1)
def _cascade():
    """The detector, read from disk once (it runs on every image of a job)."""
    import cv2

    return cv2.CascadeClassifier(str(Path(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")))


def detect_faces(image: Image.Image, min_size: int = 32) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each frontal face, largest first."""
    cascade = _cascade()
    gray = np.asarray(image.convert("L"))
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4, minSize=(min_size, min_size))
    boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]
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
                 work_size: int = 512) -> Image.Image:
    """The face detailer: each face redrawn by `second_pass` (an img2img request -> image)."""
    faces = detect_faces(image)
    if not faces:
        return image
    result = image.convert("RGB").copy()
    side = max(64, min(work_size, max(request.width, request.height)) // 8 * 8)
    for box in faces:
        crop_box = _padded_square(box, result.size)
        crop = result.crop(crop_box)
        mask = oval_mask((side, side))
        redrawn = second_pass(request.replace(
            mode="img2img", init_images=(crop.resize((side, side), Image.Resampling.LANCZOS),),
            mask=mask.point(lambda v: 255 if v > 0 else 0), mask_blur=4, inpainting_fill=1,
            inpaint_full_res=False, inpainting_mask_invert=False, denoising_strength=strength,
            width=side, height=side, resize_mode=0, outpaint_pixels=0, sd_upscale_scale=0.0))
        size = (crop_box[2] - crop_box[0], crop_box[3] - crop_box[1])
        result.paste(redrawn.resize(size, Image.Resampling.LANCZOS), crop_box[:2], oval_mask(size))
    return result


def check_restorer(name: str, models_dir: Path) -> None:
    for restorer in restorers(models_dir):
        if restorer.name == name:
            if not restorer.available:
                raise RequestError(f"Face restorer '{name}' is not available: {restorer.reason}",
                                   "face_restoration_model")
            return
    raise RequestError(f"Unknown face restorer '{name}'. Known: {', '.join(RESTORERS)}",
                       "face_restoration_model")

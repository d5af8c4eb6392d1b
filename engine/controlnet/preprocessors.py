"""ControlNet preprocessors ("annotators"): control maps made from a picture.

Module names follow the ecosystem's (sd-webui-controlnet), and ALIASES maps the older names its API
clients send onto them. A preprocessor that needs a network (HED and PiDiNet soft edges and
scribbles, the line-art models, MLSD, depth, pose, normals, segmentation) runs that network or,
when its library or weights are missing, is refused with the reason: never replaced by a filter.

Sizes: a preprocessor with `uses_resolution` first resizes the picture so its shorter side is
`resolution` pixels (the longer side keeps the aspect ratio, rounded to a whole pixel; no padding
or rounding to multiples of 8/64) and returns the map at that size; the others return it at the
picture's own size. The caller frames the map to the generation size.

Inpaint maps are RGBA: alpha 0 marks the pixels to regenerate (the pipeline turns them into -1,
the value inpaint ControlNets were trained with); everything else is RGB.

The depth, pose and normal preprocessors run controlnet_aux's detectors on weight files kept in
models/ControlNet/annotators (the files of the lllyasviel/Annotators repository, flat or in the
ecosystem's sub-folders); segmentation runs an ADE20K model folder through transformers (see
annotators.py). Weight files not there yet are downloaded on first use (annotator_downloads.py).
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from engine.errors import RequestError
from engine.controlnet import annotator_downloads as downloads
from engine.controlnet import annotators as weighted
from engine.controlnet import face_id, filters
from engine.controlnet import ip_adapter

MIN_RESOLUTION, MAX_RESOLUTION, DEFAULT_RESOLUTION = 64, 2048, 512
MAX_SIDE = 8192  # longest processing side: a thin strip scaled up would not fit in memory
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class Slider:
    """A threshold the UI shows as a slider."""

    label: str
    minimum: float
    maximum: float
    default: float
    step: float


@dataclass(frozen=True)
class _Job:
    image: np.ndarray          # H x W x 3 uint8, at the processing size
    a: float | None
    b: float | None
    mask: np.ndarray | None    # H x W bool, True = regenerate (inpaint only)
    folder: Path               # where annotator weights are
    annotators: weighted.Annotators  # what loads and keeps them, and where they run


@dataclass(frozen=True)
class Preprocessor:
    name: str
    title: str
    uses_resolution: bool
    threshold_a: Slider | None
    threshold_b: Slider | None
    needs_mask: bool = False
    requires: str = ""
    note: str = ""     # what a job using it is told (a part of the extension's that is not here)
    _fn: Callable[[_Job], np.ndarray] | None = field(default=None, repr=False, compare=False)
    _backend: str = field(default="", repr=False)          # "", "controlnet_aux" or "transformers"
    _files: tuple[str, ...] = field(default=(), repr=False)  # weight files (or a folder) in annotators/
    _subfolder: str = field(default="", repr=False)        # where the ecosystem keeps them
    # IP-Adapter modules: the image encoder they read the picture with ("clip_h", "clip_g",
    # "auto": by the model, "insightface": FaceID's face embeddings, face_id.py); "" for the others.
    ip_encoder: str = ""
    # Another module that reads the picture with a CLIP image encoder (t2ia_style_clipvision).
    clip_encoder: str = ""


# --- helpers -------------------------------------------------------------------------------------

def _flatten(image: Image.Image) -> np.ndarray:
    """RGB pixels; transparent ones become white (line art is often drawn on a transparent sheet)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _resize_short_side(rgb: np.ndarray, resolution: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = resolution / min(height, width)
    if height <= width:
        size = (max(1, round(width * scale)), resolution)
    else:
        size = (resolution, max(1, round(height * scale)))
    if size == (width, height):
        return rgb
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def _mask_array(mask: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """White = masked. A mask with alpha counts only its opaque strokes (a painted layer)."""
    if "A" in mask.getbands():
        rgba = mask.convert("RGBA")
        gray = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("L")
    else:
        gray = mask.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.NEAREST)
    return np.asarray(gray) >= 128


# --- the table -----------------------------------------------------------------------------------

_AUX_REQUIRES = "the controlnet_aux library and its annotator weights ({files}) in " + weighted.ANNOTATORS


def _aux(name: str, title: str, files: tuple[str, ...], subfolder: str,
         slider_a: Slider | None = None, slider_b: Slider | None = None) -> Preprocessor:
    """A preprocessor running controlnet_aux's network on lllyasviel/Annotators' `files`."""
    return Preprocessor(name, title, True, slider_a, slider_b, requires=_AUX_REQUIRES.format(files=", ".join(files)),
                        _fn=weighted.runner(name), _backend=weighted.AUX, _files=files, _subfolder=subfolder)


def _ip(name: str, title: str, encoder: str) -> Preprocessor:
    """An IP-Adapter module: its "map" is the reference picture itself; the image encoder turns
    it into features when the job runs (ip_adapter.py)."""
    return Preprocessor(name, title, False, None, None, requires=_IP_REQUIRES[encoder], _fn=filters.none,
                        _backend="insightface" if encoder == "insightface" else "", ip_encoder=encoder)


_IP_REQUIRES = {
    "auto": "an IP-Adapter model and its CLIP image encoder in " + weighted.ANNOTATORS + "/clip_vision",
    "clip_h": "an IP-Adapter model and the CLIP ViT-H image encoder (clip_h) in " + weighted.ANNOTATORS
              + "/clip_vision",
    "clip_g": "an IP-Adapter model and the CLIP ViT-bigG image encoder (clip_g) in " + weighted.ANNOTATORS
              + "/clip_vision",
    "insightface": "face embeddings from insightface's buffalo_l face-analysis model (the insightface library "
                   "and onnxruntime; FaceID plus also the CLIP ViT-H/14 image encoder)",
}

_GAMMA = Slider("Gamma Correction", 0.1, 2.0, 1.0, 0.001)
_FIDELITY = Slider("Style Fidelity (only for Balanced mode)", 0.0, 1.0, 0.5, 0.01)
_OPENPOSE_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")

PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", "None (the picture as it is)", False, None, None, _fn=filters.none),
    Preprocessor("invert", "Invert (white background, black lines)", False, None, None, _fn=filters.invert),
    Preprocessor("canny", "Canny edges", True, Slider("Low threshold", 1, 255, 100, 1),
                 Slider("High threshold", 1, 255, 200, 1), _fn=filters.canny),
    Preprocessor("scribble", "Scribble (your drawing)", True, Slider("Stroke threshold", 1, 255, 32, 1), None,
                 _fn=filters.scribble),
    Preprocessor("scribble_xdog", "Scribble from a photo (XDoG)", True, Slider("XDoG threshold", 1, 64, 32, 1),
                 None, _fn=filters.scribble_xdog),
    Preprocessor("softedge_gradient", "Soft edges (gradients)", True, None, None, _fn=filters.softedge_gradient),
    Preprocessor("lineart_standard", "Line art (standard)", True, None, None, _fn=filters.lineart_standard),
    _aux("depth_midas", "Depth (MiDaS)", ("dpt_hybrid-midas-501f0c75.pt",), "midas"),
    _aux("depth_zoe", "Depth (ZoeDepth)", ("ZoeD_M12_N.pt",), "zoedepth"),
    _aux("normal_bae", "Normal map (BAE)", ("scannet.pt",), "normal_bae"),
    _aux("openpose", "OpenPose (body)", _OPENPOSE_FILES, "openpose"),
    _aux("openpose_full", "OpenPose (body, hands, face)", _OPENPOSE_FILES, "openpose"),
    _aux("openpose_hand", "OpenPose (body, hands)", _OPENPOSE_FILES, "openpose"),
    _aux("openpose_face", "OpenPose (body, face)", _OPENPOSE_FILES, "openpose"),
    _aux("openpose_faceonly", "OpenPose (face only)", _OPENPOSE_FILES, "openpose"),
    _aux("softedge_hed", "Soft edges (HED)", (weighted.HED_FILE,), "hed"),
    _aux("softedge_hedsafe", "Soft edges (HED, safe)", (weighted.HED_FILE,), "hed"),
    _aux("softedge_pidinet", "Soft edges (PiDiNet)", (weighted.PIDINET_FILE,), "pidinet"),
    _aux("softedge_pidisafe", "Soft edges (PiDiNet, safe)", (weighted.PIDINET_FILE,), "pidinet"),
    _aux("scribble_hed", "Scribble from a photo (HED)", (weighted.HED_FILE,), "hed"),
    _aux("scribble_pidinet", "Scribble from a photo (PiDiNet)", (weighted.PIDINET_FILE,), "pidinet"),
    _aux("t2ia_sketch_pidi", "Sketch (PiDiNet, T2I sketch adapter)", (weighted.PIDINET_FILE,), "pidinet"),
    _aux("lineart_realistic", "Line art (realistic)", weighted.LINEART_FILES, "lineart"),
    _aux("lineart_coarse", "Line art (coarse)", weighted.LINEART_FILES, "lineart"),
    _aux("lineart_anime", "Line art (anime)", (weighted.LINEART_ANIME_FILE,), "lineart_anime"),
    _aux("mlsd", "Straight lines (M-LSD)", (weighted.MLSD_FILE,), "mlsd",
         Slider("MLSD Value Threshold", 0.01, 2.0, 0.1, 0.01), Slider("MLSD Distance Threshold", 0.01, 20.0, 0.1, 0.01)),
    Preprocessor("seg_ofade20k", "Segmentation (ADE20K)", True, None, None,
                 requires=("the transformers library and an ADE20K semantic-segmentation model folder "
                           f"(config.json and weights, e.g. openmmlab/upernet-convnext-small) in "
                           f"{weighted.ANNOTATORS}/{weighted.SEG_FOLDER}"),
                 _fn=weighted.seg_ade20k, _backend="transformers", _files=(weighted.SEG_FOLDER,)),
    Preprocessor("shuffle", "Content shuffle", True, None, None, _fn=filters.shuffle),
    Preprocessor("tile_resample", "Tile (resample)", False, Slider("Down sampling rate", 1, 8, 1, 0.01), None,
                 _fn=filters.tile_resample),
    Preprocessor("threshold", "Threshold (black and white)", True, Slider("Binarization Threshold", 0, 255, 127, 1),
                 None, _fn=filters.threshold),
    Preprocessor("recolor_luminance", "Recolor (luminance)", False, _GAMMA, None, _fn=filters.recolor_luminance),
    Preprocessor("recolor_intensity", "Recolor (intensity)", False, _GAMMA, None, _fn=filters.recolor_intensity),
    # The T2I colour adapter's map, and the style adapter's picture (read by CLIP ViT-L/14 in the job).
    Preprocessor("t2ia_color_grid", "Colour grid (T2I colour adapter)", True, None, None, _fn=filters.color_grid),
    Preprocessor("t2ia_style_clipvision", "CLIP vision (T2I style adapter)", False, None, None,
                 requires="a T2I style adapter model and the CLIP ViT-L/14 image encoder (clip_vitl) in "
                          + weighted.ANNOTATORS + "/clip_vision", _fn=filters.none, clip_encoder="clip_vitl"),
    Preprocessor("blur_gaussian", "Tile (Gaussian blur)", True, Slider("Sigma", 0.01, 64, 9, 0.01), None,
                 _fn=filters.blur_gaussian),
    Preprocessor("inpaint", "Inpaint (global harmonious)", False, None, None, needs_mask=True, _fn=filters.inpaint),
    Preprocessor("inpaint_only", "Inpaint only (masked area)", False, None, None, needs_mask=True,
                 _fn=filters.inpaint),
    # The extension first fills the masked area with LaMa (big-lama.pt): no LaMa here, so the
    # masked area starts from the picture as inpaint_only's does, and the job says so.
    Preprocessor("inpaint_only+lama", "Inpaint only + LaMa fill", False, None, None, needs_mask=True,
                 note="inpaint_only+lama: the LaMa fill of the masked area (big-lama.pt) is not available in "
                      "this version, so it ran as inpaint_only (the masked area starts from the picture)",
                 _fn=filters.inpaint),
    # The picture itself; the colours are fixed in the prediction at each step (latent_fixes.py).
    Preprocessor("tile_colorfix", "Tile (colour fix)", False, Slider("Variation", 3, 32, 8, 1), None,
                 _fn=filters.none),
    Preprocessor("tile_colorfix+sharp", "Tile (colour fix + sharp)", False, Slider("Variation", 3, 32, 8, 1),
                 Slider("Sharpness", 0.0, 2.0, 1.0, 0.01), _fn=filters.none),
    # No model: the UNet's self-attention and/or block statistics borrow from the picture (reference.py).
    Preprocessor("reference_only", "Reference only (no model)", False, _FIDELITY, None, _fn=filters.none),
    Preprocessor("reference_adain", "Reference AdaIN (no model)", False, _FIDELITY, None, _fn=filters.none),
    Preprocessor("reference_adain+attn", "Reference AdaIN + attention (no model)", False, _FIDELITY, None,
                 _fn=filters.none),
    _ip("ip-adapter-auto", "IP-Adapter (image encoder picked by the model)", "auto"),
    _ip("ip-adapter_clip_sd15", "IP-Adapter, CLIP ViT-H (SD 1.x, SDXL vit-h)", "clip_h"),
    _ip("ip-adapter_clip_sdxl", "IP-Adapter, CLIP ViT-bigG (SDXL)", "clip_g"),
    _ip("ip-adapter_clip_sdxl_plus_vith", "IP-Adapter, CLIP ViT-H (SDXL plus vit-h)", "clip_h"),
    _ip("ip-adapter_face_id", "IP-Adapter FaceID (insightface)", "insightface"),
    _ip("ip-adapter_face_id_plus", "IP-Adapter FaceID plus (insightface and CLIP ViT-H)", "insightface"),
)}

ALIASES: dict[str, str] = {
    "color": "t2ia_color_grid",
    "pidinet_sketch": "t2ia_sketch_pidi",
    "clip_vision": "t2ia_style_clipvision",
    "invert (from white bg & black line)": "invert",
    # The extension's older names for the same operations.
    "pidinet_scribble": "scribble_pidinet",
    "fake_scribble": "scribble_hed",
    "hed": "softedge_hed",
    "hed_safe": "softedge_hedsafe",
    "pidinet": "softedge_pidinet",
    "pidinet_safe": "softedge_pidisafe",
    "lineart_standard (from white bg & black line)": "lineart_standard",
    "lineart": "lineart_realistic",
    "lineart_anime_denoise": "lineart_anime",
    "depth": "depth_midas",
    "dw_openpose_full": "openpose_full",
    "oneformer_ade20k": "seg_ofade20k",
    "seg_ufade20k": "seg_ofade20k",
    "segmentation": "seg_ofade20k",
    "inpaint_global_harmonious": "inpaint",
    "ip-adapter_clip_h": "ip-adapter_clip_sd15",
    "ip-adapter_clip_g": "ip-adapter_clip_sdxl",
    "ip-adapter_auto": "ip-adapter-auto",
    "ip-adapter_face_id_plusv2": "ip-adapter_face_id_plus",
}


# --- lookup, availability and running ------------------------------------------------------------

def find(name: str) -> Preprocessor:
    """The preprocessor called `name` (ours, an alias or a title, any case); "" means "none"."""
    if name is None or isinstance(name, str):
        key = (name or "").strip().lower() or "none"
        key = ALIASES.get(key, key)
        if key in PREPROCESSORS:
            return PREPROCESSORS[key]
        for preprocessor in PREPROCESSORS.values():  # lists of titles get sent back as names
            if preprocessor.title.lower() == key:
                return preprocessor
    raise RequestError(f"Unknown preprocessor '{name}'. Known: {', '.join(PREPROCESSORS)}", "module")


def annotators_dir(models_dir: Path | None) -> Path:
    """Where annotator weights live. `models_dir` may be the models folder, models/ControlNet or
    the annotators folder itself; None is the app's own models folder. models/ControlNet/annotators,
    or models/ControlNet/annotator where only that one is there (the singular name is also used)."""
    folder = Path(models_dir) if models_dir is not None else DEFAULT_MODELS_DIR
    if folder.name.lower() in ("annotators", "annotator"):
        return folder
    controlnet = folder if folder.name.lower() == "controlnet" else folder / "ControlNet"
    plural, singular = controlnet / "annotators", controlnet / "annotator"
    return singular if singular.is_dir() and not plural.is_dir() else plural


def _missing_modules(preprocessor: Preprocessor) -> list[str]:
    if preprocessor._backend == weighted.AUX:
        if importlib.util.find_spec(weighted.AUX) is None:
            return ["the controlnet_aux library is not installed (pip install controlnet_aux)"]
        missing = [package for module, package in weighted.AUX_DEPS if importlib.util.find_spec(module) is None]
        return [f"controlnet_aux needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                "not installed"] if missing else []
    if preprocessor._backend == "transformers" and importlib.util.find_spec("transformers") is None:
        return ["the transformers library is not installed"]
    return []


def _missing_weights(preprocessor: Preprocessor, annotators: Path) -> list[str]:
    if preprocessor._backend == "transformers":
        folder = annotators / weighted.SEG_FOLDER
        has_weights = any((folder / name).is_file() for name in
                          ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"))
        if (folder / "config.json").is_file() and has_weights:
            return []
        return [f"no ADE20K segmentation model (config.json and model.safetensors or pytorch_model.bin) "
                f"in {folder}"]
    missing = [name for name in preprocessor._files if weighted.find_file(annotators, name, preprocessor._subfolder) is None]
    if not missing:
        return []
    return [f"missing weights in {annotators}: {', '.join(missing)}"]


def _wanted(preprocessor: Preprocessor) -> downloads.Wanted | None:
    """Where a preprocessor's weights are downloaded from on first use (None: nowhere)."""
    if preprocessor._backend == weighted.AUX:
        return downloads.Wanted(downloads.ANNOTATORS_REPO, preprocessor._subfolder, preprocessor._files)
    if preprocessor._backend == "transformers":
        return downloads.Wanted(downloads.SEG_REPO, weighted.SEG_FOLDER, downloads.SEG_FILES, downloads.SEG_WEIGHTS)
    return None


def _unavailable_reason(preprocessor: Preprocessor, models_dir: Path | None, may_download: bool = False) -> str:
    """Why the preprocessor cannot run ("" when it can). Missing weights are no reason when they
    may be downloaded on first use."""
    controlnet_folder = annotators_dir(models_dir).parent
    if preprocessor._backend == "insightface":   # FaceID plus also reads the picture with CLIP ViT-H
        plus = preprocessor.name in ip_adapter.FACE_ID_PLUS_MODULES
        return face_id.unavailable_reason(controlnet_folder) or \
            (_encoder_reason(ip_adapter.CLIP_H, controlnet_folder, may_download) if plus else "")
    encoder = preprocessor.ip_encoder or preprocessor.clip_encoder
    if encoder:
        return _encoder_reason(encoder, controlnet_folder, may_download)
    if not preprocessor._backend:
        return ""
    problems = _missing_modules(preprocessor)
    if not (may_download and _wanted(preprocessor)):
        problems += _missing_weights(preprocessor, annotators_dir(models_dir))
    return "; ".join(problems)


def _fetch_weights(preprocessor: Preprocessor, models_dir: Path | None, annotators: weighted.Annotators) -> None:
    """Download the preprocessor's missing weight files (first use)."""
    folder = annotators_dir(models_dir)
    if not _missing_weights(preprocessor, folder):
        return
    wanted = _wanted(preprocessor)
    names = ", ".join(wanted.files + ((" or ".join(wanted.choices),) if wanted.choices else ()))
    try:
        annotators.fetcher.fetch(wanted, folder)
    except downloads.DownloadError as error:
        raise downloads.DownloadError(
            f"Preprocessor '{preprocessor.name}' needs {names} from {wanted.repo}, which could not be "
            f"downloaded: {error.message.rstrip('.')}. You can put the files into {folder / wanted.folder} "
            "yourself.") from error


def _encoder_reason(encoder: str, controlnet_folder: Path, may_download: bool) -> str:
    """Why a module's image encoder is not usable ("" when it is there or fetched on first use)."""
    if may_download and all(kind in downloads.ENCODER_SOURCES for kind in _encoder_kinds(encoder)):
        return ""
    return _missing_encoder(encoder, controlnet_folder)


def _encoder_kinds(encoder: str) -> tuple[str, ...]:
    return (ip_adapter.CLIP_H, ip_adapter.CLIP_G) if encoder == ip_adapter.AUTO else (encoder,)


def _missing_encoder(encoder: str, controlnet_folder: Path) -> str:
    """Why an IP-Adapter module cannot run: its CLIP image encoder is not there ("auto": neither is)."""
    problems = []
    for kind in _encoder_kinds(encoder):
        try:
            ip_adapter.find_encoder(controlnet_folder, kind)
            return ""
        except RequestError as error:
            problems.append(error.message)
    return "; ".join(problems)


def availability(models_dir: Path | None, may_download: bool = False) -> list[tuple[str, bool, str]]:
    """(name, available, reason) for every preprocessor, in display order; reason is "" when
    available. `may_download`: weights missing but downloadable on first use count as there."""
    result = []
    for preprocessor in PREPROCESSORS.values():
        reason = _unavailable_reason(preprocessor, models_dir, may_download)
        result.append((preprocessor.name, not reason, reason))
    return result


def _threshold(preprocessor: Preprocessor, slider: Slider | None, value, field_name: str) -> float | None:
    if slider is None:
        return None  # ignored: API clients send values for sliders a module does not have
    if value is None or (value == -1 and not isinstance(value, bool)):  # -1: the ecosystem's "unset"
        return float(slider.default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise RequestError(f"{field_name} ({slider.label}) for '{preprocessor.name}' must be a number, "
                           f"got {value!r}", field_name)
    if not slider.minimum <= value <= slider.maximum:
        raise RequestError(f"{field_name} ({slider.label}) for '{preprocessor.name}' must be between "
                           f"{slider.minimum:g} and {slider.maximum:g}, got {value:g}", field_name)
    return float(value)


def _resolution(value) -> int:
    if value is None or (value == -1 and not isinstance(value, bool)):
        return DEFAULT_RESOLUTION
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value):
        raise RequestError(f"processor_res must be a whole number of pixels, got {value!r}", "processor_res")
    if not MIN_RESOLUTION <= value <= MAX_RESOLUTION:
        raise RequestError(f"processor_res must be between {MIN_RESOLUTION} and {MAX_RESOLUTION}, got {value:g}",
                           "processor_res")
    return int(value)


def run(name: str, image: Image.Image, resolution: int = DEFAULT_RESOLUTION, threshold_a: float | None = None,
        threshold_b: float | None = None, mask: Image.Image | None = None,
        models_dir: Path | None = None, annotators: weighted.Annotators | None = None) -> Image.Image:
    """The control map of `image` (RGB; RGBA with alpha 0 on masked pixels for inpaint).

    Thresholds None (or -1, the ecosystem's "unset") mean the slider's default, and are ignored by
    modules without that slider; `resolution` (-1: 512) is only checked (64-2048) where the module
    uses it. Inpaint modules take `mask`
    (white = regenerate) and, without one, the picture's transparent pixels. `annotators`: what
    keeps the detectors of weight-needing modules loaded (the ControlNet library's); without it
    they are loaded for this map only, on the default device."""
    preprocessor = find(name)
    a = _threshold(preprocessor, preprocessor.threshold_a, threshold_a, "threshold_a")
    b = _threshold(preprocessor, preprocessor.threshold_b, threshold_b, "threshold_b")
    size = _resolution(resolution) if preprocessor.uses_resolution else None
    if not isinstance(image, Image.Image):
        raise RequestError("The control image is not a picture", "image")
    annotators = annotators if annotators is not None else weighted.Annotators()
    may_download = annotators.downloads_on()
    reason = _unavailable_reason(preprocessor, models_dir, may_download)
    if reason:
        raise RequestError(f"Preprocessor '{preprocessor.name}' is not available: {reason}", "module")

    masked = None
    if preprocessor.needs_mask:
        pixels = np.asarray(image.convert("RGB"))
        if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
            alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
            if alpha.min() < 128:
                masked = alpha < 128
        if mask is not None:
            painted = _mask_array(mask, image.size)
            masked = painted if masked is None else masked | painted
        if masked is None:
            raise RequestError(f"Preprocessor '{preprocessor.name}' needs a mask: paint the area to regenerate, "
                               "or send a picture whose transparent pixels mark it", "mask")
    else:
        pixels = _flatten(image)
    if size is not None:
        longest = round(max(pixels.shape[:2]) * size / min(pixels.shape[:2]))
        if longest > MAX_SIDE:
            raise RequestError(f"At processor_res {size} this {pixels.shape[1]}x{pixels.shape[0]} picture would be "
                               f"{longest} pixels long (at most {MAX_SIDE}): lower processor_res or crop the "
                               "picture", "processor_res")
        pixels = _resize_short_side(pixels, size)

    if may_download and _wanted(preprocessor):
        _fetch_weights(preprocessor, models_dir, annotators)   # first use: after every check above
    job = _Job(np.ascontiguousarray(pixels), a, b, masked, annotators_dir(models_dir), annotators)
    result = preprocessor._fn(job)
    return Image.fromarray(np.ascontiguousarray(result, dtype=np.uint8), "RGBA" if result.shape[2] == 4 else "RGB")


"""The preprocessors that need weights: controlnet_aux's depth, pose and normal detectors on
the annotator files in models/ControlNet/annotators (lllyasviel/Annotators' files, flat or in the
ecosystem's sub-folders), and ADE20K segmentation through a transformers model folder there.
Everything is imported lazily: without the library they are only listed, with the reason.
What they load is kept by an `Annotators` (its cache and device), which the ControlNet library owns."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np

from engine.controlnet.annotator_downloads import AnnotatorFetcher, hub_offline
from engine.errors import RequestError

if TYPE_CHECKING:
    from engine.controlnet.preprocessors import _Job

AUX = "controlnet_aux"
# lllyasviel/Annotators' file names (what the ControlNet extension downloads and users copy in).
HED_FILE, PIDINET_FILE = "ControlNetHED.pth", "table5_pidinet.pth"
LINEART_FILES = ("sk_model.pth", "sk_model2.pth")   # realistic, coarse
LINEART_ANIME_FILE, MLSD_FILE = "netG.pth", "mlsd_large_512_fp32.pth"
AUX_DEPS = (("torchvision", "torchvision"), ("timm", "timm"), ("einops", "einops"), ("skimage", "scikit-image"))
ANNOTATORS = "models/ControlNet/annotators"
SEG_FOLDER = "seg_ade20k"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Annotators:
    """The detectors and segmentation models that weight-needing preprocessors have loaded, kept
    for the next map, and the device they run on. The ControlNet library holds one, built with
    the app's device (--use-cpu etc.), so the preprocessors run where generation runs."""

    def __init__(self, device: str | None = None, may_download: Callable[[], bool] | None = None):
        self.device = str(device) if device is not None else default_device()
        # Whether missing weight files may be fetched on first use (the app: its
        # auto_download_models setting); HF_HUB_OFFLINE always forbids it.
        self.may_download = may_download or (lambda: True)
        self.fetcher = AnnotatorFetcher()
        self._loaded: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def downloads_on(self) -> bool:
        return bool(self.may_download()) and not hub_offline()

    def unload(self) -> None:
        """Forget the loaded detectors (frees their memory)."""
        with self._lock:
            self._loaded.clear()

    def detector(self, kind: str, annotators: Path, files: tuple[str, ...], subfolder: str):
        """controlnet_aux's detector for `kind`, built once from the local files and kept."""
        paths = tuple(find_file(annotators, name, subfolder) for name in files)
        # One detector serves the variants of a network (body / full pose, soft edge / scribble).
        group = next((name for name in ("openpose", "hed", "pidi", "lineart_anime", "lineart")
                      if name in kind), kind)
        key = (group, str(annotators), paths)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = _aux_detector(kind, annotators, paths, self.device)
            return self._loaded[key]

    def face_analysis(self, folder: Path):
        """insightface's face analysis over the pack in `folder` (FaceID units); kept."""
        from engine.controlnet import face_id

        key = ("insightface", str(folder))
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = face_id.load_analysis(folder)
            return self._loaded[key]

    def segmenter(self, folder: Path):
        """The ADE20K model in `folder` on the device, with its pixel normalisation; kept."""
        key = ("seg", str(folder))
        with self._lock:
            if key not in self._loaded:
                model, mean, std, rescale = _segmenter(folder)
                self._loaded[key] = (model.to(self.device), mean, std, rescale)
            return self._loaded[key]


def find_file(annotators: Path, name: str, subfolder: str) -> str | None:
    """The file's path relative to `annotators`: flat, or in the ecosystem's sub-folder."""
    for relative in (name, f"{subfolder}/{name}" if subfolder else None):
        if relative and (annotators / relative).is_file():
            return relative
    return None


def _aux_detector(kind: str, annotators: Path, paths: tuple[str, ...], device: str):
    """controlnet_aux's detector for `kind` from the files at `paths` (relative to `annotators`),
    on `device`."""
    try:
        import controlnet_aux
    except Exception as error:  # an installed but broken dependency chain
        raise RequestError(f"Preprocessor '{kind}' is not available: controlnet_aux is installed but "
                           f"cannot be imported ({error})", "module") from error
    try:
        return _build_detector(controlnet_aux, kind, str(annotators), paths).to(device)
    except RequestError:
        raise
    except Exception as error:  # a damaged or wrong file is for the user to replace
        raise RequestError(f"Preprocessor '{kind}' could not load its weights from {annotators}: "
                           f"{type(error).__name__}: {error}", "module") from error


def _build_detector(controlnet_aux, kind: str, folder: str, paths: tuple[str, ...]):
    if kind == "depth_midas":
        return controlnet_aux.MidasDetector.from_pretrained(folder, model_type="dpt_hybrid", filename=paths[0])
    if kind == "depth_zoe":
        return controlnet_aux.ZoeDetector.from_pretrained(folder, filename=paths[0])
    if kind.startswith("openpose"):
        # Body, hand and face files are all read when the detector is built.
        return controlnet_aux.OpenposeDetector.from_pretrained(
            folder, filename=paths[0], hand_filename=paths[1], face_filename=paths[2])
    if kind == "normal_bae":
        return controlnet_aux.NormalBaeDetector.from_pretrained(folder, filename=paths[0])
    if kind in ("softedge_hed", "softedge_hedsafe", "scribble_hed"):
        return controlnet_aux.HEDdetector.from_pretrained(folder, filename=paths[0])
    if kind in ("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet", "t2ia_sketch_pidi"):
        return controlnet_aux.PidiNetDetector.from_pretrained(folder, filename=paths[0])
    if kind in ("lineart_realistic", "lineart_coarse"):
        return controlnet_aux.LineartDetector.from_pretrained(folder, filename=paths[0], coarse_filename=paths[1])
    if kind == "lineart_anime":
        return controlnet_aux.LineartAnimeDetector.from_pretrained(folder, filename=paths[0])
    if kind == "mlsd":
        return controlnet_aux.MLSDdetector.from_pretrained(folder, filename=paths[0])
    raise AssertionError(kind)


def _run_aux(kind: str, job: _Job, **options) -> np.ndarray:
    from engine.controlnet.preprocessors import PREPROCESSORS  # the table names this module's functions

    preprocessor = PREPROCESSORS[kind]
    detector = job.annotators.detector(kind, job.folder, preprocessor._files, preprocessor._subfolder)
    height, width = job.image.shape[:2]
    side = min(height, width)
    # controlnet_aux rounds its working size to multiples of 64; the map is brought back to ours.
    result = detector(job.image, detect_resolution=side, image_resolution=side, output_type="np", **options)
    result = np.asarray(result)
    if result.ndim == 2:
        result = np.repeat(result[:, :, None], 3, axis=2)
    result = np.ascontiguousarray(result[:, :, :3]).astype(np.uint8)
    if result.shape[:2] != (height, width):
        result = cv2.resize(result, (width, height), interpolation=cv2.INTER_LINEAR)
    return result


# The options each module hands its network, as the ControlNet extension means the module.
_OPTIONS = {
    "openpose": {"include_body": True, "include_hand": False, "include_face": False},
    "openpose_full": {"include_body": True, "include_hand": True, "include_face": True},
    "openpose_hand": {"include_body": True, "include_hand": True, "include_face": False},
    "openpose_face": {"include_body": True, "include_hand": False, "include_face": True},
    "openpose_faceonly": {"include_body": False, "include_hand": False, "include_face": True},
    "t2ia_sketch_pidi": {"apply_filter": True},
    "softedge_hedsafe": {"safe": True}, "softedge_pidisafe": {"safe": True},
    "scribble_hed": {"scribble": True}, "scribble_pidinet": {"safe": True, "scribble": True},
    "lineart_coarse": {"coarse": True},
}


def runner(kind: str):
    """The preprocessor function of a controlnet_aux module (M-LSD takes its two thresholds)."""
    def run(job: _Job) -> np.ndarray:
        options = dict(_OPTIONS.get(kind, {}))
        if kind == "mlsd":
            options.update(thr_v=job.a, thr_d=job.b)
        return _run_aux(kind, job, **options)
    run.__name__ = kind
    return run


# The 150 ADE20K class colours (MMSegmentation's table), which seg ControlNets were trained on.
_ADE20K_HEX = (
    "787878b4787806e6e650323204c8037878508c8c8ccc05ffe6e6e604fa07e005ffebff0796053d78784608ff33ff0652"
    "8fff8cccff04ff3307cc46030066c83de6faff06330b66ffff0747ff09e00907e6dcdcdcff095c7009ff08ffd607ffe0"
    "ffb8060aff47ff290a07ffffe0ff086608ffff3d06ffc207ff7a0800ff14ff0829ff05990633ffeb0cffa0961400a3ff"
    "8c8c8cfa0a0f14ff001fff00ff1f00ffe00099ff000000ffff470000ebff00adff1f00ff0bc8c8ff520000fff5003dff"
    "00ff7000ff85ff0000ffa300ff6600c2ff00008fff33ff000052ff00ff2900ffad0a00ffadff0000ff99ff5c00ff00ff"
    "ff00f5ff0066ffad00ff0014ffb8b8001fff00ff3d0047ffff00cc00ffc200ff52000aff0070ff3300ff00c2ff007aff"
    "00ffa3ff990000ff0aff70008fff005200ffa3ff00ffeb0008b8aa8500ff00ff5cb800ffff001f00b8ff00d6ffff0070"
    "5cff0000e0ff70e0ff46b8a0a300ff9900ff47ff00ff00a3ffcc00ff008f00ffeb85ff00ff00ebf500ffff007afff500"
    "0abed4d6ff0000ccff1400ffffff000099ff0029ff00ffcc2900ff29ff00ad00ff00f5ff4700ff7a00ff00ffb8005cff"
    "b8ff000085ffffd60019c2c266ff005c00ff"
)
ADE20K_PALETTE = np.frombuffer(bytes.fromhex(_ADE20K_HEX), dtype=np.uint8).reshape(150, 3)


def _segmenter(folder: Path):
    """The ADE20K model read from `folder` (on the CPU), its mean, std and rescale factor."""
    try:
        from transformers import AutoModelForSemanticSegmentation

        model = AutoModelForSemanticSegmentation.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # a damaged or unsupported folder is for the user to replace
        raise RequestError(f"Preprocessor 'seg_ofade20k' could not load the model in {folder}: "
                           f"{type(error).__name__}: {error}", "module") from error
    labels = int(model.config.num_labels)
    if labels != len(ADE20K_PALETTE):
        raise RequestError(f"Preprocessor 'seg_ofade20k' is not available: the model in {folder} has "
                           f"{labels} classes, not ADE20K's 150", "module")
    mean, std, rescale = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255
    config_file = folder / "preprocessor_config.json"
    if config_file.is_file():  # read by hand: transformers' processors want torchvision
        config = json.loads(config_file.read_text(encoding="utf-8"))
        mean = config.get("image_mean", mean)
        std = config.get("image_std", std)
        rescale = config.get("rescale_factor", rescale) if config.get("do_rescale", True) else 1.0
    return model.eval(), np.asarray(mean, np.float32), np.asarray(std, np.float32), float(rescale)


def seg_ade20k(job: _Job) -> np.ndarray:
    import torch

    model, mean, std, rescale = job.annotators.segmenter(job.folder / SEG_FOLDER)
    height, width = job.image.shape[:2]
    # Backbones downsample by up to 32; pad by reflection rather than distort the picture.
    pad_h, pad_w = -height % 32, -width % 32
    padded = cv2.copyMakeBorder(job.image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
    pixels = (padded.astype(np.float32) * rescale - mean) / std
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    parameter = next(model.parameters())
    with torch.no_grad():
        logits = model(pixel_values=tensor.to(parameter.device, parameter.dtype)).logits
        logits = torch.nn.functional.interpolate(logits.float(), size=padded.shape[:2], mode="bilinear",
                                                 align_corners=False)
    labels = logits[0].argmax(0).cpu().numpy()[:height, :width]
    return ADE20K_PALETTE[labels]

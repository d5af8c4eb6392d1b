"""Face embeddings for FaceID IP-Adapter units (ip-adapter_face_id, ip-adapter_face_id_plus), read
as the ControlNet extension reads them: insightface's face analysis with its buffalo_l model pack
(an SCRFD face detector and an ArcFace recogniser, ONNX files run by onnxruntime), at a 640 x 640
detection size, the largest face of each reference picture, its normalised 512-wide embedding.

The pack is looked for where the ecosystem keeps it: models/insightface/models/buffalo_l (Forge,
ComfyUI) or models/ControlNet/annotators/insightface/models/buffalo_l (the extension's downloads
folder); insightface itself is never asked to download it. The library is optional and imported
only here: without it, or without the pack, the FaceID modules are listed with the reason and a
unit that names one is refused with it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.errors import RequestError

PACK = "buffalo_l"
DETECTION_SIZE = (640, 640)
INSTALL = "pip install insightface onnxruntime scikit-image (onnxruntime-gpu on an NVIDIA machine)"


def pack_folders(controlnet_folder: Path) -> list[Path]:
    folder = Path(controlnet_folder)
    return [folder.parent / "insightface" / "models" / PACK,
            folder / "annotators" / "insightface" / "models" / PACK]


def find_pack(controlnet_folder: Path) -> Path | None:
    """The first folder holding the pack's .onnx files."""
    return next((folder for folder in pack_folders(controlnet_folder)
                 if folder.is_dir() and any(folder.glob("*.onnx"))), None)


def unavailable_reason(controlnet_folder: Path) -> str:
    """Why FaceID embeddings cannot be made here ("" when they can)."""
    missing = [name for name in ("insightface", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"FaceID needs face embeddings from insightface's {PACK} model, and {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not installed ({INSTALL})")
    if find_pack(controlnet_folder) is None:
        places = " or ".join(str(folder) for folder in pack_folders(controlnet_folder))
        return (f"FaceID needs insightface's {PACK} face-analysis model: put its .onnx files (det_10g.onnx, "
                f"w600k_r50.onnx, ...) into {places}")
    return ""


def _providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider") if name in available] or available


def load_analysis(folder: Path):
    """insightface's FaceAnalysis over the pack in `folder`: detection and recognition only."""
    try:
        from insightface.app import FaceAnalysis

        analysis = FaceAnalysis(name=str(folder), root=str(folder.parent.parent),
                                allowed_modules=["detection", "recognition"], providers=_providers())
        analysis.prepare(ctx_id=0, det_size=DETECTION_SIZE)
    except Exception as error:  # a damaged pack or a broken install is for the user to fix
        raise RequestError(f"insightface could not load the {PACK} model in {folder}: "
                           f"{type(error).__name__}: {str(error)[:300]}", "module") from error
    if "recognition" not in analysis.models:
        raise RequestError(f"The {PACK} model in {folder} has no face recognition model (w600k_r50.onnx)", "module")
    return analysis


def largest_face(faces):
    """The face with the largest box (the extension uses it when a picture has several)."""
    return max(faces, key=lambda face: (face.bbox[2] - face.bbox[0]) * (face.bbox[3] - face.bbox[1]))


def embeddings(analysis, pictures: list[Image.Image], where: str) -> torch.Tensor:
    """(pictures, 512) float32: each picture's largest face's normalised embedding."""
    import cv2

    rows = []
    for number, picture in enumerate(pictures, start=1):
        bgr = cv2.cvtColor(np.asarray(picture.convert("RGB")), cv2.COLOR_RGB2BGR)
        faces = analysis.get(bgr)
        if not faces:
            raise RequestError(f"{where}: no face was found in reference picture {number}; FaceID needs a "
                               "picture with a face", "image")
        rows.append(np.asarray(largest_face(faces).normed_embedding, dtype=np.float32))
    return torch.from_numpy(np.stack(rows))


def mismatch(index: int, module: str, model: str, kind) -> str:
    """Why a FaceID module and an IP-Adapter model do not go together ("" when they do)."""
    from engine.controlnet.ip_adapter import FACE_ID_PLUS_MODULES

    face_module = module.startswith("ip-adapter_face_id")
    if kind.face_id and not face_module:
        return (f"ControlNet unit {index}: '{model}' is a FaceID IP-Adapter: use the ip-adapter_face_id "
                "preprocessor (ip-adapter_face_id_plus for FaceID plus models)")
    if face_module and not kind.face_id:
        return (f"ControlNet unit {index}: preprocessor '{module}' is for FaceID IP-Adapter models "
                f"(ip-adapter-faceid*), and '{model}' is not one")
    plus_model, plus_module = kind.name == "faceid plus", module in FACE_ID_PLUS_MODULES
    if plus_model != plus_module:
        wanted = "ip-adapter_face_id_plus" if plus_model else "ip-adapter_face_id"
        return (f"ControlNet unit {index}: '{model}' is a FaceID{' plus' if plus_model else ''} IP-Adapter: use the "
                f"{wanted} preprocessor")
    return ""


def features(image_proj: dict, kind, images: list[Image.Image], library, device, dtype, where: str):
    """(face embeddings (pictures, 512), the negative's zeros (1, 512), FaceID plus's CLIP ViT-H
    hidden states and the negative's, or None), on the CPU."""
    from engine.controlnet import ip_adapter

    folder = find_pack(library.folder)
    if folder is None or unavailable_reason(library.folder):
        raise RequestError(f"{where}: {unavailable_reason(library.folder)}", "module")
    faces = embeddings(library.annotators.face_analysis(folder), images, where)
    if kind.name != "faceid plus":
        return faces, torch.zeros_like(faces[:1]), None
    path = library.encoder_path(ip_adapter.CLIP_H)
    encoder, processor = library.image_encoder(path)
    width = int(image_proj["perceiver_resampler.proj_in.weight"].shape[1])
    if encoder.config.hidden_size != width:
        raise RequestError(f"{where}: this FaceID plus IP-Adapter reads {width}-wide CLIP hidden states, but the image "
                           f"encoder {path.name} gives {encoder.config.hidden_size}", "module")
    cond, uncond = ip_adapter.features_on(device, dtype, encoder, processor, images, hidden_states=True)
    return faces, torch.zeros_like(faces[:1]), (cond.float(), uncond.float())

"""Checking a request's ControlNet units against what is installed, before the job is queued:
the preprocessor exists and can run here, the model exists and fits the loaded checkpoint."""

from __future__ import annotations

import re

from engine.controlnet import face_id, ip_adapter, preprocessors, style_adapter
from engine.controlnet.annotator_downloads import ENCODER_SOURCES
from engine.controlnet.units import NO_MODEL, ControlUnit
from engine.errors import RequestError
from engine.models.loading import FAMILY_LABELS

_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,}\]$")  # "control_v11p_sd15_canny [d14c016b]"


def resolve_model(library, name: str, index: int) -> str:
    """The library's name for `name`, which client programs often send with a hash suffix."""
    for names in (library.names(), list(library.refresh())):  # the second look sees new files
        for candidate in (name, _HASH_SUFFIX.sub("", name)):
            for known in names:
                if known.lower() == candidate.lower():
                    return known
    listed = ", ".join(names) or "none (put ControlNet models in models/ControlNet)"
    raise RequestError(f"ControlNet unit {index}: model '{name}' not found. Available: {listed}", "model")


def check_units(units: tuple[ControlUnit, ...], library, family: str | None) -> tuple[ControlUnit, ...]:
    """The units with model names resolved; RequestError for the first that cannot run."""
    checked = []
    available = {name: (ok, reason) for name, ok, reason in preprocessors.availability(
        library.folder, library.annotators.downloads_on())}
    for index, unit in enumerate(units):
        if not unit.enabled:
            checked.append(unit)
            continue
        module = preprocessors.find(unit.module).name
        ok, reason = available.get(module, (True, ""))
        if not ok:
            raise RequestError(f"ControlNet unit {index}: preprocessor '{module}' is not available: {reason}",
                               "module")
        if unit.replace(module=module).model_free:
            checked.append(unit.replace(module=module, model=NO_MODEL))
            continue
        model = resolve_model(library, unit.model, index)
        model_family = library.family(model)
        if family is not None and model_family != family:
            what = "IP-Adapter" if library.is_ip_adapter(model) else "ControlNet"
            raise RequestError(
                f"ControlNet unit {index}: '{model}' is a {FAMILY_LABELS.get(model_family, model_family)} "
                f"{what}, but the loaded checkpoint is {FAMILY_LABELS.get(family, family)}: pick a "
                f"{what} made for this checkpoint's family", "model")
        _check_ip_adapter(library, module, model, model_family, index, 1 + len(unit.more_images))
        _check_style_adapter(library, module, model, index)
        checked.append(unit.replace(module=module, model=model))
    return tuple(checked)


def _check_ip_adapter(library, module: str, model: str, family: str, index: int, unit_images: int) -> None:
    """An IP-Adapter model goes with an ip-adapter module and its image encoder, and only so."""
    encoder = preprocessors.find(module).ip_encoder
    if not library.is_ip_adapter(model):
        if unit_images > 1:
            raise RequestError(f"ControlNet unit {index}: several control images are for IP-Adapter units (their "
                               f"pictures are averaged); '{model}' is a ControlNet: send one image", "image")
        if encoder:
            raise RequestError(f"ControlNet unit {index}: preprocessor '{module}' is for IP-Adapter models, and "
                               f"'{model}' is a ControlNet: pick an IP-Adapter model", "model")
        return
    if not encoder:
        raise RequestError(f"ControlNet unit {index}: '{model}' is an IP-Adapter: use an ip-adapter_* preprocessor "
                           "(ip-adapter-auto picks the image encoder by the model)", "module")
    kind = ip_adapter.kind_of_shapes(ip_adapter.key_shapes(library.entry(model).path, model, library.allow_unsafe))
    mismatch = face_id.mismatch(index, module, model, kind)
    if mismatch:
        raise RequestError(mismatch, "module")
    if kind.face_id:   # the face model was checked with the module; FaceID plus also reads CLIP ViT-H
        encoder = ip_adapter.CLIP_H if kind.name == "faceid plus" else ""
        if not encoder:
            return
    wanted = ip_adapter.encoder_for(encoder, model, family)
    if not (library.annotators.downloads_on() and wanted in ENCODER_SOURCES):   # else fetched on first use
        ip_adapter.find_encoder(library.folder, wanted)


def _check_style_adapter(library, module: str, model: str, index: int) -> None:
    """A T2I style adapter reads its picture with CLIP (t2ia_style_clipvision), and only it does."""
    is_style = library.is_style_adapter(model)
    if is_style and module != style_adapter.MODULE:
        raise RequestError(f"ControlNet unit {index}: '{model}' is a T2I style adapter: use the "
                           f"{style_adapter.MODULE} preprocessor", "module")
    if not is_style and module == style_adapter.MODULE:
        raise RequestError(f"ControlNet unit {index}: preprocessor '{module}' is for T2I style adapter models "
                           f"(t2iadapter_style_*), and '{model}' is not one", "model")

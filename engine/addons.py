"""The add-ons a generation can use besides the checkpoint: LoRAs, embeddings, VAEs, styles,
extensions, upscalers, face restoration networks and ControlNets.

Made once by app.py from the data folder and handed to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .controlnet.models import ControlNetLibrary
from .devices import DeviceConfig
from .embeddings import EmbeddingLibrary
from .extensions import ExtensionRegistry
from .face_models import FaceModelLibrary
from .folders import Folders
from .lora import LoraLibrary
from .models import HashCache
from .styles import StyleStore
from .upscalers import UpscalerLibrary
from .vae import VaeLibrary

BUILTIN_EXTENSIONS = Path(__file__).resolve().parent.parent / "extensions"


@dataclass(frozen=True)
class AddOns:
    loras: LoraLibrary
    embeddings: EmbeddingLibrary
    vaes: VaeLibrary
    styles: StyleStore
    extensions: ExtensionRegistry
    upscalers: UpscalerLibrary
    faces: FaceModelLibrary
    controlnets: ControlNetLibrary

    @classmethod
    def in_data_dir(cls, data_dir: Path, hashes: HashCache, extension_folders: list[Path] = (),
                    device: DeviceConfig | None = None, allow_unsafe: bool = False) -> "AddOns":
        """The ecosystem's folders under `data_dir`: models/Lora, models/embeddings (and the older
        embeddings/), models/VAE and styles.csv; the built-in extensions, then
        <data dir>/extensions and any other extension folders given."""
        return cls.from_folders(Folders.in_data_dir(data_dir), hashes, extension_folders, device,
                                allow_unsafe)

    @classmethod
    def from_folders(cls, folders: Folders, hashes: HashCache, extension_folders: list[Path] = (),
                     device: DeviceConfig | None = None, allow_unsafe: bool = False,
                     extensions: str = "all", controlnet_dtype: torch.dtype | None = None) -> "AddOns":
        """`extensions`: "all", "builtin" (--disable-extra-extensions) or "none"
        (--disable-all-extensions: not even imported). `controlnet_dtype`: other than the
        device's (--no-half-controlnet)."""
        for folder in folders.model_folders():
            folder.mkdir(parents=True, exist_ok=True)
        device = device or DeviceConfig(torch.device("cpu"), torch.float32)
        if controlnet_dtype is not None:
            device_for_controlnets = DeviceConfig(device.device, controlnet_dtype)
        else:
            device_for_controlnets = device
        extension_sources = [(BUILTIN_EXTENSIONS, True), (folders.data / "extensions", False)] + \
            [(Path(folder), False) for folder in extension_folders]
        if extensions != "all":
            extension_sources = [source for source in extension_sources if source[1] and extensions == "builtin"]
        return cls(
            loras=LoraLibrary([folders.lora, folders.lyco], hashes),
            embeddings=EmbeddingLibrary([folders.embeddings, folders.data / "embeddings"]),
            vaes=VaeLibrary(folders.vae, hashes),
            styles=StyleStore(folders.styles_files),
            upscalers=UpscalerLibrary([folders.esrgan, folders.realesrgan]),
            faces=FaceModelLibrary(folders.models, {"GFPGAN": folders.gfpgan, "CodeFormer": folders.codeformer}),
            # Loaded where generation runs (the GPU lane's device) when first used.
            controlnets=ControlNetLibrary(folders.controlnet, device_for_controlnets, allow_unsafe=allow_unsafe),
            extensions=ExtensionRegistry(extension_sources),
        )

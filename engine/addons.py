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
from .downloads import CatalogueDownloads
from .embeddings import EmbeddingLibrary
from .extensions import ExtensionRegistry
from .face_models import FaceModelLibrary
from .lora import LoraLibrary
from .model_catalogue import ModelCatalogue
from .models import HashCache
from .styles import StyleStore
from .upscalers import FOLDERS as UPSCALER_FOLDERS
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
    downloads: CatalogueDownloads  # the standard upscaler and face restoration files, on request

    @classmethod
    def in_data_dir(cls, data_dir: Path, hashes: HashCache, extension_folders: list[Path] = (),
                    device: DeviceConfig | None = None, allow_unsafe: bool = False,
                    catalogue: ModelCatalogue | None = None) -> "AddOns":
        """The ecosystem's folders: models/Lora, models/embeddings (and the older embeddings/),
        models/VAE and styles.csv; the built-in extensions, then <data dir>/extensions and any
        other extension folders given. `catalogue`: the standard models and their hosts (by
        default from the environment: SD_STUDIO_GITHUB_ENDPOINT, HF_ENDPOINT)."""
        models = Path(data_dir) / "models"
        for name in ("Lora", "embeddings", "VAE", *UPSCALER_FOLDERS, "GFPGAN", "Codeformer", "ControlNet", "BLIP"):
            (models / name).mkdir(parents=True, exist_ok=True)
        catalogue = catalogue or ModelCatalogue.from_environment()
        return cls(
            loras=LoraLibrary(models / "Lora", hashes),
            embeddings=EmbeddingLibrary([models / "embeddings", Path(data_dir) / "embeddings"]),
            vaes=VaeLibrary(models / "VAE", hashes),
            styles=StyleStore(Path(data_dir) / "styles.csv"),
            upscalers=UpscalerLibrary([models / name for name in UPSCALER_FOLDERS], catalogue, models),
            faces=FaceModelLibrary(models, catalogue),
            downloads=CatalogueDownloads(catalogue, models),
            # Loaded where generation runs (the GPU lane's device) when first used.
            controlnets=ControlNetLibrary(models / "ControlNet", device or DeviceConfig(torch.device("cpu"), torch.float32),
                                          allow_unsafe=allow_unsafe),
            extensions=ExtensionRegistry(
                [(BUILTIN_EXTENSIONS, True), (Path(data_dir) / "extensions", False)]
                + [(Path(folder), False) for folder in extension_folders]),
        )

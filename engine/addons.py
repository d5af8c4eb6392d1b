"""The add-ons a generation can use besides the checkpoint: LoRAs, embeddings, VAEs, styles,
extensions, upscalers, face restoration networks and ControlNets; and, for tests, the plan of
stages that run out of memory on purpose.

Made once by app.py from the data folder and handed to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from engine.controlnet.models import ControlNetLibrary
from engine.memory.memory_guard import FaultPlan
from engine.devices import DeviceConfig
from engine.models.downloads import CatalogueDownloads
from engine.models.preview_models import PreviewModels
from engine.networks.embeddings import EmbeddingLibrary
from engine.extensions.registry import ExtensionRegistry
from engine.postprocess.face_models import FaceModelLibrary
from engine.settings.folders import Folders
from engine.networks.lora import LoraLibrary
from engine.networks.network_catalogue import NetworkCatalogue
from engine.models.model_catalogue import ModelCatalogue
from engine.files import HashCache
from engine.prompts.styles import StyleStore
from engine.postprocess.upscalers import UpscalerLibrary
from engine.networks.vae import VaeLibrary

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
    previews: PreviewModels  # the TAESD and Approx NN live preview decoders, fetched on first use
    # The extra networks' cards (previews, user metadata, training metadata); the UI tells it
    # the checkpoints.
    networks: NetworkCatalogue
    # Tests only: memory faults the jobs' stages fire (memory_guard.stage); None: none.
    faults: FaultPlan | None = None

    @classmethod
    def in_data_dir(cls, data_dir: Path, hashes: HashCache, extension_folders: list[Path] = (),
                    device: DeviceConfig | None = None, allow_unsafe: bool = False,
                    catalogue: ModelCatalogue | None = None,
                    disabled_extensions: Iterable[str] = (), faults: FaultPlan | None = None) -> "AddOns":
        """The ecosystem's folders under `data_dir`: models/Lora, models/embeddings (and the older
        embeddings/), models/VAE and styles.csv; the built-in extensions, then
        <data dir>/extensions and any other extension folders given. `catalogue`: the standard
        models and their hosts (by default from the environment: SD_STUDIO_GITHUB_ENDPOINT,
        HF_ENDPOINT). `faults`: for tests, stages that run out of memory on purpose."""
        return cls.from_folders(Folders.in_data_dir(data_dir), hashes, extension_folders, device,
                                allow_unsafe, catalogue=catalogue, disabled_extensions=disabled_extensions,
                                faults=faults)

    @classmethod
    def from_folders(cls, folders: Folders, hashes: HashCache, extension_folders: list[Path] = (),
                     device: DeviceConfig | None = None, allow_unsafe: bool = False,
                     extensions: str = "all", catalogue: ModelCatalogue | None = None,
                     disabled_extensions: Iterable[str] = (), faults: FaultPlan | None = None) -> "AddOns":
        """`extensions`: "all", "builtin" (--disable-extra-extensions) or "none"
        (--disable-all-extensions: not even imported). `disabled_extensions`: the setting of that
        name; the third-party extensions it names are listed but not imported. `faults`: for
        tests, stages that run out of memory on purpose (app.py's from SD_STUDIO_FAULTS)."""
        for folder in folders.model_folders():
            folder.mkdir(parents=True, exist_ok=True)
        device = device or DeviceConfig(torch.device("cpu"), torch.float32)
        catalogue = catalogue or ModelCatalogue.from_environment()
        downloads = CatalogueDownloads(catalogue, folders.models, folder_of=folders.catalogue_folder)
        extension_sources = [(BUILTIN_EXTENSIONS, True), (folders.data / "extensions", False)] + \
            [(Path(folder), False) for folder in extension_folders]
        if extensions != "all":
            extension_sources = [source for source in extension_sources if source[1] and extensions == "builtin"]
        return cls(
            loras=LoraLibrary([folders.lora, folders.lyco], hashes),
            embeddings=EmbeddingLibrary([folders.embeddings, folders.data / "embeddings"]),
            networks=NetworkCatalogue([folders.lora, folders.lyco], [folders.embeddings, folders.data / "embeddings"]),
            vaes=VaeLibrary(folders.vae, hashes),
            styles=StyleStore(folders.styles_files),
            upscalers=UpscalerLibrary([folders.esrgan, folders.realesrgan, folders.swinir, folders.scunet],
                                      catalogue, folders.models, folder_of=folders.catalogue_folder,
                                      ldsr_folder=folders.ldsr),
            faces=FaceModelLibrary(folders.models, catalogue,
                                   {"GFPGAN": folders.gfpgan, "CodeFormer": folders.codeformer}),
            downloads=downloads,
            previews=PreviewModels(downloads, folders.catalogue_folder),
            # Loaded where generation runs (the GPU lane's device) when first used.
            controlnets=ControlNetLibrary(folders.controlnet, device, allow_unsafe=allow_unsafe),
            extensions=ExtensionRegistry(extension_sources, set(disabled_extensions)),
            faults=faults,
        )

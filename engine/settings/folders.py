"""Where each kind of file lives: the data folder's defaults (the ecosystem's models/ layout), or
the folders the start flags name instead (--models-dir, --lora-dir, --vae-dir, ...)."""

from __future__ import annotations

import argparse
import glob
from dataclasses import dataclass, fields
from pathlib import Path

# Folder -> its flag's dest and its place under the models folder.
_UNDER_MODELS = {
    "checkpoints": (None, "Stable-diffusion"),
    "vae": ("vae_dir", "VAE"),
    "lora": ("lora_dir", "Lora"),
    "lyco": ("lyco_dir_backcompat", "LyCORIS"),
    "embeddings": ("embeddings_dir", "embeddings"),
    "controlnet": ("controlnet_dir", "ControlNet"),
    "esrgan": ("esrgan_models_path", "ESRGAN"),
    "realesrgan": ("realesrgan_models_path", "RealESRGAN"),
    "swinir": ("swinir_models_path", "SwinIR"),
    "scunet": ("scunet_models_path", "ScuNET"),
    "ldsr": ("ldsr_models_path", "LDSR"),
    "gfpgan": ("gfpgan_models_path", "GFPGAN"),
    "codeformer": ("codeformer_models_path", "Codeformer"),
    "blip": (None, "BLIP"),
}


@dataclass(frozen=True)
class Folders:
    data: Path
    models: Path
    checkpoints: Path
    vae: Path
    lora: Path
    lyco: Path
    embeddings: Path
    controlnet: Path
    esrgan: Path
    realesrgan: Path
    swinir: Path
    scunet: Path
    ldsr: Path
    gfpgan: Path
    codeformer: Path
    blip: Path
    settings_file: Path
    styles_files: tuple[Path, ...]

    @classmethod
    def in_data_dir(cls, data_dir: Path, flags: argparse.Namespace | None = None) -> "Folders":
        data = Path(data_dir).resolve()
        given = vars(flags) if flags is not None else {}
        models = Path(given.get("models_dir") or data / "models").resolve()
        found = {}
        for name, (dest, below) in _UNDER_MODELS.items():
            value = given.get(dest) if dest else None
            found[name] = Path(value).resolve() if value else models / below
        settings = given.get("ui_settings_file")
        return cls(data=data, models=models, **found,
                   settings_file=Path(settings).resolve() if settings else data / "config.json",
                   styles_files=_styles_files(given.get("styles_file"), data))

    def fill_flags(self, flags: argparse.Namespace) -> None:
        """Write the folders into the flags that name them, so /sdapi/v1/cmd-flags shows where
        things are (client programs read cmd_flags["lora_dir"] and the like)."""
        flags.data_dir = str(self.data)
        flags.models_dir = str(self.models)
        for name, (dest, _) in _UNDER_MODELS.items():
            if dest:
                setattr(flags, dest, str(getattr(self, name)))
        flags.ui_settings_file = str(self.settings_file)
        flags.styles_file = [str(path) for path in self.styles_files]

    def catalogue_folder(self, name: str) -> Path:
        """The folder in use for one of the ecosystem's model folder names ("ESRGAN",
        "GFPGAN", ...), as the download catalogue names them."""
        for field_name, (_, below) in _UNDER_MODELS.items():
            if below.lower() == name.lower():
                return getattr(self, field_name)
        return self.models / name

    def model_folders(self) -> list[Path]:
        return [getattr(self, f.name) for f in fields(self) if f.name in _UNDER_MODELS]


def _styles_files(given: list[str] | None, data: Path) -> tuple[Path, ...]:
    """--styles-file values (wildcards expanded, in order, each once); default styles.csv."""
    if not given:
        return (data / "styles.csv",)
    found: list[Path] = []
    for pattern in given:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for match in matches:
            path = Path(match).resolve()
            if path not in found:
                found.append(path)
    return tuple(found) or (data / "styles.csv",)

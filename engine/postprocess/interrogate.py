"""Describing a picture in words ("interrogate"), for the prompt box and /sdapi/v1/interrogate.

The captioner is a BLIP image-captioning model in transformers' folder format (for example
Salesforce/blip-image-captioning-base, downloaded by the user) put in models/BLIP. Nothing is
downloaded here: with no such folder the request is refused with what to install and where.
Captioning runs on the GPU lane, after the jobs already waiting, so it never races a generation.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from engine.devices import DeviceConfig
from engine.errors import NotFoundError, RequestError
from engine.jobs import Job, JobQueue

log = logging.getLogger(__name__)

# The ecosystem's interrogator names; "clip" is served by the BLIP caption.
INTERROGATORS = ("clip", "deepdanbooru")
FOLDER = "BLIP"
MAX_TOKENS = 48


class Captioner:
    def __init__(self, models_dir: Path, device: DeviceConfig):
        self.folder = Path(models_dir) / FOLDER
        self.device = device
        self._lock = threading.Lock()
        self._loaded: tuple[Path, Any, Any] | None = None  # (folder, processor, model)

    def model_folder(self) -> Path | None:
        """The first folder in models/BLIP that holds a transformers model (config.json)."""
        if (self.folder / "config.json").is_file():
            return self.folder
        if self.folder.is_dir():
            for child in sorted(self.folder.iterdir()):
                if (child / "config.json").is_file():
                    return child
        return None

    def availability(self, name: str) -> dict[str, Any]:
        if name == "deepdanbooru":
            return {"available": False, "reason": "DeepDanbooru is not supported in this version"}
        folder = self.model_folder()
        if folder is None:
            return {"available": False, "reason": self._missing()}
        return {"available": True, "reason": None, "model_path": str(folder)}

    def _missing(self) -> str:
        return (f"No captioning model installed: put a BLIP image-captioning model folder in transformers "
                f"format (e.g. Salesforce/blip-image-captioning-base) into {self.folder}")

    def caption(self, image: Image.Image, name: str, lane: JobQueue) -> str:
        if name not in INTERROGATORS:
            raise RequestError(f"Unknown interrogator '{name}'. Known: {', '.join(INTERROGATORS)}", "model")
        if name == "deepdanbooru":
            raise NotFoundError("deepdanbooru: DeepDanbooru is not supported in this version; "
                                "use model 'clip' (a BLIP caption)", "model")
        folder = self.model_folder()
        if folder is None:
            raise NotFoundError(self._missing(), "model")
        job = Job(lambda job: self._caption(folder, image.convert("RGB")), kind="interrogate",
                  description="interrogate")
        return lane.submit(job).outcome()

    def caption_here(self, image: Image.Image) -> str:
        """A caption made on this thread: for work already on the GPU lane (a script's job)."""
        folder = self.model_folder()
        if folder is None:
            raise NotFoundError(self._missing(), "model")
        return self._caption(folder, image.convert("RGB"))

    @torch.no_grad()
    def _caption(self, folder: Path, image: Image.Image) -> str:
        processor, model = self._model(folder)
        inputs = processor(images=image, return_tensors="pt").to(self.device.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        ids = model.generate(**inputs, max_new_tokens=MAX_TOKENS, num_beams=1, do_sample=False)
        return processor.decode(ids[0], skip_special_tokens=True).strip()

    def _model(self, folder: Path):
        with self._lock:
            if self._loaded is None or self._loaded[0] != folder:
                from transformers import BlipForConditionalGeneration, BlipProcessor

                try:
                    processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
                    model = BlipForConditionalGeneration.from_pretrained(
                        folder, local_files_only=True, use_safetensors=True,
                        dtype=self.device.dtype).to(self.device.device).eval()
                except (OSError, ValueError) as error:
                    raise NotFoundError(f"The captioning model in {folder} could not be loaded "
                                        f"(a BLIP captioning model in safetensors is needed): {error}",
                                        "model") from error
                log.info("captioning model loaded from %s", folder)
                self._loaded = (folder, processor, model)
            return self._loaded[1], self._loaded[2]

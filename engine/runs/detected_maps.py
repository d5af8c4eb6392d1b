"""The maps a job's ControlNet units detected, returned with its pictures as the ControlNet
extension returns them: after the pictures (API `images`, the UI's gallery), one per unit whose
`save_detected_map` is on, framed to the picture's size as the unit's resize mode frames it; with
a hires pass over the same units, that unit's map at the hires size comes first. The
`control_net_no_detectmap` setting turns the returned maps off; `control_net_detectmap_autosaving`
saves them (when the job saves its pictures) under the samples folder's detected_maps/<module>/.
An inpaint map's masked part is shown half transparent, as the extension shows it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine import image_prep
from engine.controlnet.apply import PreparedUnit, resize_mode_of


class DetectedMaps:
    def __init__(self) -> None:
        self._units: list[PreparedUnit] = []
        self._hires_size: tuple[int, int] | None = None

    def keep(self, prepared: list[PreparedUnit]) -> None:
        """The job's units, once prepared (their maps detected)."""
        self._units = [item for item in prepared if item.unit.save_detected_map]

    def saw_hires_pass(self, width: int, height: int) -> None:
        """A pass over the same frame at another size (hires fix) used the units' maps."""
        if self._units:
            self._hires_size = (width, height)

    def images(self, width: int, height: int) -> list[tuple[Image.Image, str]]:
        """(map, the unit's preprocessor) in the order the extension returns them."""
        found = []
        for item in self._units:
            sizes = ([self._hires_size] if self._hires_size else []) + [(width, height)]
            found += [(framed(item.detected, *size, item.unit.resize_mode), item.unit.module) for size in sizes]
        return found


def framed(detected: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
    """The map at width x height, framed as the unit's resize mode frames its control image."""
    mode = resize_mode_of(resize_mode)
    rgb = image_prep.resize_image(detected.convert("RGB"), mode, width, height)
    if detected.mode != "RGBA":
        return rgb
    # An inpaint map: alpha 0 where the unit repaints; shown at half strength there.
    alpha = np.asarray(image_prep.resize_image(detected.getchannel("A"), mode, width, height), dtype=np.uint8)
    shown = Image.fromarray((255 - (255 - alpha.astype(np.int16)) // 2).astype(np.uint8), "L")
    rgb.putalpha(shown)
    return rgb

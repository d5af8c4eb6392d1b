"""What every UI builder needs, made once by app.py and passed in (no module-level state)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from engine.engine import Engine
from engine.models.registry import ModelRegistry
from engine.settings.store import Settings


@dataclass(frozen=True)
class UIContext:
    engine: Engine
    registry: ModelRegistry
    settings: Settings
    flags: argparse.Namespace
    download: "object | None" = None  # engine.models.downloads.ModelDownloader when offered
    # (extension name, its accordion) in every tab, so enabling or disabling one in the
    # Extensions tab shows or hides its fields at once.
    extension_accordions: list = field(default_factory=list)
    # Stops or restarts the running server (--api-server-stop); app.serve connects it.
    control: "object | None" = None

    @property
    def models(self):
        return self.engine.models

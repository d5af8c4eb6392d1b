"""The "Saving images" settings: which images are saved, in what format, under which names."""

from __future__ import annotations

from .option import Option

SECTION = "Saving images"

SAVING_OPTIONS: tuple[Option, ...] = (
    Option("samples_save", True, "Always save all generated images", SECTION),
    Option("samples_format", "png", "File format for images", SECTION, choices=("png",)),
    Option("grid_save", True, "Always save all generated image grids", SECTION),
)

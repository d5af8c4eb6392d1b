"""The "User interface" settings: the tabs' default values and ranges, the theme."""

from __future__ import annotations

from .option import Option

SECTION = "User interface"

UI_OPTIONS: tuple[Option, ...] = ()

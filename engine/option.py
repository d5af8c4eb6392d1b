"""One setting's schema: its key (the ecosystem's name), default, label, section and limits.

Kept apart from engine/settings/store.py so each group of options can live next to the code it steers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.validation import Flag, NameMap, Names, Number, OneOf, Rule, Text, Whole

# What one setting may hold: no real setting comes near (file name patterns, folder paths and
# lists of names are short), and config.json and every GET /options carry each value.
MAX_SETTING_CHARS = 10_000
MAX_SETTING_ITEMS = 1_000


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    section: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    restart: bool = False
    # A rule the type and limits cannot say (a folder must stay inside outputs/): called with
    # (key, coerced value, data dir), raises RequestError naming the key.
    check: Callable[[str, Any, Path], None] | None = None

    def accept(self, value: Any, data_dir: Path) -> Any:
        """The value coerced and checked against every rule, or RequestError naming the key."""
        value = self.coerce(value)
        if self.check is not None:
            self.check(self.key, value, data_dir)
        return value

    def rule(self) -> Rule:
        """The validation rule of this setting's values (engine/validation.py); lenient, as
        config files and client programs write numbers and flags as text."""
        kind = type(self.default)
        if kind is bool:
            return Flag(lenient=True)
        if kind is int:
            return Whole(_whole(self.minimum), _whole(self.maximum), lenient=True)
        if kind is float:
            return Number(self.minimum, self.maximum, lenient=True)
        if kind is list:
            return Names(max_items=MAX_SETTING_ITEMS, max_chars=MAX_SETTING_CHARS, comma_text=True)
        if kind is dict:  # one value per name (per checkpoint); `choices` are the values'
            return NameMap(self.choices or (), max_items=MAX_SETTING_ITEMS, max_chars=MAX_SETTING_CHARS)
        return Text(MAX_SETTING_CHARS)

    def coerce(self, value: Any) -> Any:
        """The value converted to this option's type, or RequestError naming the key."""
        if value is None and self.default == "None":
            value = "None"  # client programs send null for "no upscaler", "no refiner"
        label = f"Setting {self.key}"
        value = self.rule().check(value, label, self.key)
        if type(self.default) is float:
            value = float(value)
        if self.choices is not None and not isinstance(self.default, dict):
            OneOf(self.choices).check(value, label, self.key)
        return value


def _whole(limit: float | None) -> int | None:
    return None if limit is None else int(limit)

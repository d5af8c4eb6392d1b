"""One setting's schema: its key (the ecosystem's name), default, label, section and limits.

Kept apart from engine/settings/store.py so each group of options can live next to the code it steers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.errors import RequestError

# What one setting may hold: no real setting comes near (file name patterns, folder paths and
# lists of names are short), and config.json and every GET /options carry each value.
MAX_SETTING_CHARS = 10_000
MAX_SETTING_ITEMS = 1_000


def shown(value: Any) -> str:
    """A value for an error message, cut short: echoing a huge one back would be a problem itself."""
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


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

    def coerce(self, value: Any) -> Any:
        """The value converted to this option's type, or RequestError naming the key."""
        kind = type(self.default)
        if value is None and self.default == "None":
            value = "None"  # client programs send null for "no upscaler", "no refiner"
        try:
            if kind is bool:
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    value = value.lower() == "true"
                if not isinstance(value, bool):
                    raise TypeError
            elif kind is int:
                if isinstance(value, bool) or not float(value).is_integer():
                    raise TypeError
                value = int(value)
            elif kind is float:
                if isinstance(value, bool):
                    raise TypeError
                value = float(value)
                if not math.isfinite(value):
                    raise TypeError
            elif kind is str:
                if not isinstance(value, str):
                    raise TypeError
            elif kind is list:
                if isinstance(value, str):
                    value = [part.strip() for part in value.split(",") if part.strip()]
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                    raise TypeError
                value = list(value)
        except (TypeError, ValueError, OverflowError):
            raise RequestError(f"Setting {self.key} must be {kind.__name__}, got {shown(value)}", self.key)
        if kind is str and len(value) > MAX_SETTING_CHARS:
            raise RequestError(f"Setting {self.key} is too long: {len(value)} characters, at most "
                               f"{MAX_SETTING_CHARS}", self.key)
        if kind is list and (len(value) > MAX_SETTING_ITEMS or any(len(v) > MAX_SETTING_CHARS for v in value)):
            raise RequestError(f"Setting {self.key} is too long: at most {MAX_SETTING_ITEMS} entries of "
                               f"{MAX_SETTING_CHARS} characters each", self.key)
        if self.choices is not None and value not in self.choices:
            raise RequestError(f"Setting {self.key} must be one of {list(self.choices)}, got {shown(value)}",
                               self.key)
        if self.minimum is not None and value < self.minimum or \
                self.maximum is not None and value > self.maximum:
            raise RequestError(
                f"Setting {self.key} must be between {self.minimum:g} and {self.maximum:g}, got {value}",
                self.key)
        return value

"""The X/Y/Z plot's value syntax, as A1111's users type it.

- A list: comma-separated, read as CSV, so a value holding a comma is written in double quotes
  (`"a, b", c`). Spaces around each value are dropped. Several lines are one list.
- Whole-number ranges: `1-5` (1 2 3 4 5), `1-10 (+2)` (1 3 5 7 9), `10-1 (-3)` (10 7 4: counting
  down, A1111 stops before the end), `1-10 [5]` (five values spread evenly, cut to whole numbers:
  1 3 5 7 10).
- Decimal ranges: `0.5-1.5 (+0.25)`, `1-2 [3]` (1.0 1.5 2.0).
- Permutations: every order of the listed values (the Prompt order axis).

Only plain data goes in and out: the axis table (axes.py) says which kind an axis takes."""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from typing import Any, Iterable, Sequence

from engine.errors import RequestError

# More values than this on one axis is a typing slip (`1-1000000`), not a plot anyone can look at;
# refusing it keeps a shared server from building huge lists.
MAX_AXIS_VALUES = 1000
MAX_VALUES_CHARS = 20_000
MAX_PERMUTED = 6  # 6 tokens: 720 orders

_NUMBER_INT = r"[+-]?\s*\d+"
_NUMBER_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
# start-end, then an optional step in round brackets or a count in square brackets
_INT_RANGE = re.compile(rf"\s*({_NUMBER_INT})\s*-\s*({_NUMBER_INT})\s*(?:\(\s*([+-]\s*\d+)\s*\)|\[\s*(\d+)\s*\])?\s*")
_FLOAT_RANGE = re.compile(
    rf"\s*({_NUMBER_FLOAT})\s*-\s*({_NUMBER_FLOAT})\s*(?:\(\s*([+-]\s*(?:\d+(?:\.\d*)?|\.\d+))\s*\)|\[\s*(\d+)\s*\])?\s*")


def _number(text: str) -> str:
    return text.replace(" ", "")


def split_list(text: str) -> list[str]:
    """A comma-separated list read as CSV (quotes keep commas), each value stripped; all lines."""
    if not isinstance(text, str):
        raise RequestError(f"values must be text, got {text!r}", "script_args")
    if len(text) > MAX_VALUES_CHARS:
        raise RequestError(f"values are too long: {len(text)} characters (at most {MAX_VALUES_CHARS})",
                           "script_args")
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    try:
        return [value.strip() for row in rows for value in row]
    except csv.Error as error:
        raise RequestError(f"values could not be read as a comma-separated list: {error}", "script_args")


def join_list(values: Iterable[str]) -> str:
    """The values as one CSV line (what the infotext records for values picked from a list)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(list(values))
    return out.getvalue()


def _spread(start: float, end: float, count: int) -> list[float]:
    """`count` values from start to end, both included, evenly apart."""
    if count <= 0:
        return []
    if count == 1:
        return [start]
    step = (end - start) / (count - 1)
    values = [start + index * step for index in range(count)]
    values[-1] = end
    return values


def _checked_count(count: int, text: str) -> int:
    if count > MAX_AXIS_VALUES:
        raise RequestError(f"'{text}' makes {count} values; an axis takes at most {MAX_AXIS_VALUES}",
                           "script_args")
    return count


def expand_int(text: str) -> list[int]:
    """One whole number or a whole-number range."""
    match = _INT_RANGE.fullmatch(text)
    if match is None:
        try:
            return [int(text)]
        except ValueError:
            raise RequestError(f"'{text}' is not a whole number or a range such as 1-5, 1-10 (+2) "
                               "or 1-10 [5]", "script_args") from None
    start, end = int(_number(match.group(1))), int(_number(match.group(2)))
    if match.group(4) is not None:
        count = _checked_count(int(match.group(4)), text)
        return [int(value) for value in _spread(start, end, count)]
    step = int(_number(match.group(3))) if match.group(3) is not None else 1
    if step == 0:
        raise RequestError(f"'{text}': the step of a range cannot be 0", "script_args")
    # As A1111 counts: the end plus one is where counting stops, whichever way it goes.
    stop = end + 1
    _checked_count(max(0, math.ceil((stop - start) / step)), text)
    return list(range(start, stop, step))


def expand_float(text: str) -> list[float]:
    """One number or a decimal range."""
    match = _FLOAT_RANGE.fullmatch(text)
    if match is None:
        try:
            value = float(text)
        except ValueError:
            raise RequestError(f"'{text}' is not a number or a range such as 0.5-1.5 (+0.25) or 1-2 [3]",
                               "script_args") from None
        if not math.isfinite(value):
            raise RequestError(f"'{text}' is not a finite number", "script_args")
        return [value]
    start, end = float(_number(match.group(1))), float(_number(match.group(2)))
    if match.group(4) is not None:
        return _spread(start, end, _checked_count(int(match.group(4)), text))
    step = float(_number(match.group(3))) if match.group(3) is not None else 1.0
    if step == 0:
        raise RequestError(f"'{text}': the step of a range cannot be 0", "script_args")
    # From start in steps up to and including the end (the end plus one step is excluded).
    count = _checked_count(max(0, math.ceil((end + step - start) / step)), text)
    return [start + index * step for index in range(count)]


def expand(kind: str, items: Sequence[str]) -> list[Any]:
    """The listed items of one axis as its values: numbers and ranges expanded, permutations made."""
    if kind == "int":
        values: list[Any] = [v for item in items if item.strip() for v in expand_int(item)]
    elif kind == "float":
        values = [v for item in items if item.strip() for v in expand_float(item)]
    elif kind == "permutations":
        tokens = list(items)
        if len(tokens) > MAX_PERMUTED:
            raise RequestError(f"Prompt order takes at most {MAX_PERMUTED} values ({math.factorial(MAX_PERMUTED)} "
                               f"orders), got {len(tokens)}", "script_args")
        values = list(itertools.permutations(tokens)) if tokens else []
    else:
        values = list(items)
    if len(values) > MAX_AXIS_VALUES:
        raise RequestError(f"{len(values)} values; an axis takes at most {MAX_AXIS_VALUES}", "script_args")
    return values

"""Emphasis: `(word)`, `[word]`, `(word:1.5)` weights and the BREAK keyword.

Pure functions on strings; see the package docstring for how they fit together.
"""

from __future__ import annotations

import math
import re

BREAK = ("BREAK", -1.0)
"""The piece ``parse_emphasis`` yields for the ``BREAK`` keyword (start a new 75-token chunk)."""

MAX_WEIGHT = 100.0
"""Emphasis weights are clamped to ``0 <= weight <= MAX_WEIGHT``."""

_ROUND_FACTOR = 1.1          # (text)
_SQUARE_FACTOR = 1 / 1.1     # [text]
# Products are held below this while multiplying so that nothing overflows to inf (and then to
# nan when multiplied by an explicit 0); it is far above MAX_WEIGHT, so results below the clamp
# are unaffected.
_PRODUCT_CEILING = 1e100

_EMPHASIS_SPECIAL = frozenset("()[]:\\")
_ESCAPABLE = frozenset("()[]\\")
# What may follow ":" to make an explicit weight: optional blanks, a number, blanks, ")".
_WEIGHT_AFTER_COLON = re.compile(r"\s*([+-]?[\d.]+)\s*\)")
# BREAK as a whole word, together with the whitespace around it.
_BREAK_WORD = re.compile(r"\s*(?<!\w)BREAK(?!\w)\s*")


def _explicit_weight(number: str) -> float | None:
    """The value of an explicit ``(text:number)`` weight, or None when it is no number."""
    try:
        value = float(number)
    except ValueError:
        return None
    if math.isnan(value):
        return None
    return min(max(value, 0.0), _PRODUCT_CEILING)


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Split prompt text into ``(fragment, weight)`` pieces by its attention syntax.

    - ``(x)`` multiplies the weight of x by 1.1, ``[x]`` divides it by 1.1; nesting multiplies
      (``((x))`` is 1.21).
    - ``(x:w)`` multiplies by ``w`` instead of 1.1 (and still multiplies with the brackets around
      it: ``((x:2))`` is 2.2). Blanks around ``w`` are allowed: ``(x: 1.3 )``. The explicit weight
      closes the innermost open round bracket, even with a square bracket opened after it.
    - ``\\(`` ``\\)`` ``\\[`` ``\\]`` are literal brackets and ``\\\\`` a literal backslash; a
      backslash before any other character is kept as a literal backslash.
    - Brackets still open at the end of the text apply to the rest of it (``(unbalanced`` is
      ``unbalanced`` at 1.1); a closing bracket with no opener is literal text, and so is a ``:``
      that does not start a valid weight (``(a:b)`` is ``a:b`` at 1.1, ``(x:1.2.3)`` is
      ``x:1.2.3`` at 1.1).
    - ``BREAK`` (upper case, a whole word) becomes the piece ``("BREAK", -1.0)`` and swallows
      the whitespace around it. It keeps -1.0 inside brackets too and is never merged.
    - Adjacent pieces of equal weight merge (``(unnecessary)(parens)`` is one piece at 1.1), and
      empty pieces are left out; empty text gives ``[("", 1.0)]``.

    Weights are computed in the same order of float operations as the mature web UI, so they
    are bit-identical to it whenever its weight lies in [0, 100]. Beyond that this parser
    differs on purpose, so that every weight is finite and ``0 <= weight <= 100``: a negative
    explicit weight counts as 0 (``(x:-1)`` is x at 0.0), and a weight above 100 is clamped to
    100 (``(x:1000)`` is x at 100.0). BREAK pieces are the only ones with weight -1.

    Never raises.
    """
    # Each piece: [text, weight, is_break]
    pieces: list[list] = []
    rounds: list[int] = []   # index into pieces where each open "(" started
    squares: list[int] = []  # the same for "["

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not piece[2]:
                piece[1] = min(piece[1] * factor, _PRODUCT_CEILING)

    def add_literal(fragment: str) -> None:
        pieces.append([fragment, 1.0, False])

    def add_text(run: str) -> None:
        for index, part in enumerate(_BREAK_WORD.split(run)):
            if index:
                pieces.append([BREAK[0], BREAK[1], True])
            if part:
                add_literal(part)

    length = len(text)
    i = 0
    while i < length:
        char = text[i]
        if char == "\\":
            if i + 1 < length and text[i + 1] in _ESCAPABLE:
                add_literal(text[i + 1])
                i += 2
            else:
                add_literal("\\")
                i += 1
        elif char == "(":
            rounds.append(len(pieces))
            i += 1
        elif char == "[":
            squares.append(len(pieces))
            i += 1
        elif char == ")" and rounds:
            scale(rounds.pop(), _ROUND_FACTOR)
            i += 1
        elif char == "]" and squares:
            scale(squares.pop(), _SQUARE_FACTOR)
            i += 1
        elif char == ":":
            match = _WEIGHT_AFTER_COLON.match(text, i + 1) if rounds else None
            weight = _explicit_weight(match.group(1)) if match else None
            if weight is None:
                add_literal(":")
                i += 1
            else:
                scale(rounds.pop(), weight)
                i = match.end()
        elif char in _EMPHASIS_SPECIAL:  # a stray ")" or "]"
            add_literal(char)
            i += 1
        else:
            end = i + 1
            while end < length and text[end] not in _EMPHASIS_SPECIAL:
                end += 1
            add_text(text[i:end])
            i = end

    # Unclosed brackets reach to the end: round ones first, then square ones (each outermost
    # first), which is the order the mature UI multiplies them in.
    for start in rounds:
        scale(start, _ROUND_FACTOR)
    for start in squares:
        scale(start, _SQUARE_FACTOR)

    result: list[tuple[str, float]] = []
    for fragment, weight, is_break in pieces:
        if is_break:
            result.append(BREAK)
            continue
        weight = min(weight, MAX_WEIGHT) if weight > 0 else 0.0
        if result and result[-1] != BREAK and result[-1][1] == weight:
            result[-1] = (result[-1][0] + fragment, weight)
        else:
            result.append((fragment, weight))
    return result or [("", 1.0)]


def strip_emphasis(text: str) -> str:
    """The text of ``parse_emphasis(text)`` without its syntax: brackets, explicit weights and
    escapes removed, each BREAK replaced by one space (``"(a:1.2) BREAK [b]"`` -> ``"a b"``).
    Handy for counting tokens."""
    parts: list[str] = []
    current = ""
    for fragment, weight in parse_emphasis(text):
        if (fragment, weight) == BREAK:
            parts.append(current)
            current = ""
        else:
            current += fragment
    parts.append(current)
    return " ".join(part for part in parts if part)

"""Prompt syntax: emphasis weights, prompt editing / alternation, and extra-network tags.

Pure functions on strings (no torch), following the conventions of the widely used
AUTOMATIC1111 web UI (see COMPAT.md, "Prompt syntax"). The order a prompt goes through them:

1. ``extract_extra_networks`` removes ``<lora:name:0.8>`` style tags from the whole prompt.
2. ``prompt_schedule`` resolves ``[from:to:when]`` and ``[a|b]`` into one plain text per range
   of sampling steps.
3. ``parse_emphasis`` splits each of those texts into ``(fragment, weight)`` pieces.

None of the parsers raises on any input string: text that is not valid syntax is used as it is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "BREAK",
    "MAX_WEIGHT",
    "ExtraNetwork",
    "distinct_texts",
    "extract_extra_networks",
    "lora_weights",
    "parse_emphasis",
    "prompt_schedule",
    "prompt_schedules",
    "strip_emphasis",
    "text_at_step",
]

# ---------------------------------------------------------------------------------------------
# Emphasis
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Prompt editing and alternation
# ---------------------------------------------------------------------------------------------

Schedule = list[tuple[int, str]]

# Editing constructs nested deeper than this make the prompt count as unparsable (used
# literally), which keeps the recursive parser far from Python's recursion limit.
_MAX_NESTING = 100

_SCHEDULE_SPECIAL = frozenset("\\[]():|")
# The "when" of [from:to:when]: a number (integer, decimal or with exponent, optionally
# signed) with optional blanks around it.
_WHEN = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*")


@dataclass
class _Switch:
    """``[before:after:when]``: ``before`` up to and including step ``when``, then ``after``."""

    before: list
    after: list
    when: str


@dataclass
class _Alternation:
    """``[a|b|c]``: option ``(step - 1) % len(options)`` at each step."""

    options: list


_Node = str | _Switch | _Alternation


class _Unparsable(Exception):
    """The prompt is not valid editing syntax as a whole: it is used literally."""


class _EditingParser:
    """Recursive-descent parser for the editing syntax.

    The language accepted is that of the mature UI: inside any bracket construct everything
    must be well formed (brackets matched, ``:`` and ``|`` only as the construct's own
    separators); at the outermost level a bracket or ``:`` that starts no valid construct is
    literal text. A ``|`` that is not directly inside a valid ``[...|...]``, or a backslash
    at the very end of the prompt or before a newline, makes the whole prompt unparsable.
    """

    def __init__(self, text: str):
        self.text = text
        self.length = len(text)
        self.constructs: dict[int, tuple[list[_Node], int] | None] = {}

    def parse(self) -> list[_Node]:
        text, nodes, i = self.text, [], 0
        while i < self.length:
            char = text[i]
            if char == "\\":
                i = self._escape(i, nodes)
            elif char == "|":
                raise _Unparsable
            elif char in "([":
                found = self._construct(i, 0)
                if found is None:
                    nodes.append(char)
                    i += 1
                else:
                    nodes.extend(found[0])
                    i = found[1]
            elif char in ")]:":
                nodes.append(char)
                i += 1
            else:
                i = self._plain(i, nodes)
        return nodes

    def _escape(self, i: int, nodes: list) -> int:
        if i + 1 >= self.length or self.text[i + 1] == "\n":
            raise _Unparsable
        nodes.append(self.text[i:i + 2])
        return i + 2

    def _plain(self, i: int, nodes: list) -> int:
        end = i + 1
        while end < self.length and self.text[end] not in _SCHEDULE_SPECIAL:
            end += 1
        nodes.append(self.text[i:end])
        return end

    def _items(self, i: int, depth: int) -> tuple[list[_Node], int] | None:
        """Well-formed content up to the next separator or closing bracket at this level;
        None when a nested construct is malformed."""
        text, nodes = self.text, []
        while i < self.length:
            char = text[i]
            if char in "])|:":
                break
            if char == "\\":
                i = self._escape(i, nodes)
            elif char in "([":
                found = self._construct(i, depth)
                if found is None:
                    return None
                nodes.extend(found[0])
                i = found[1]
            else:
                i = self._plain(i, nodes)
        return nodes, i

    def _construct(self, start: int, depth: int) -> tuple[list[_Node], int] | None:
        """The construct opened by the bracket at ``start``: (nodes, index after it), or None
        when it is not a valid one."""
        if start in self.constructs:
            return self.constructs[start]
        if depth >= _MAX_NESTING:
            raise _Unparsable
        text = self.text
        opener = text[start]
        closer = ")" if opener == "(" else "]"
        parts: list[tuple[list[_Node], int, int]] = []
        separators: list[str] = []
        result = None
        i = start + 1
        while True:
            found = self._items(i, depth + 1)
            if found is None:
                break
            nodes, end = found
            parts.append((nodes, i, end))
            if end >= self.length:
                break
            char = text[end]
            if char == closer:
                built = self._build(opener, parts, separators)
                result = None if built is None else (built, end + 1)
                break
            if char not in ":|":
                break  # a closing bracket of the other kind
            separators.append(char)
            i = end + 1
        self.constructs[start] = result
        return result

    def _build(self, opener: str, parts: list, separators: list[str]) -> list[_Node] | None:
        contents = [nodes for nodes, _, _ in parts]
        if opener == "(":  # emphasis, (text) or (text:weight): kept as literal text here
            if not separators:
                return ["(", *contents[0], ")"]
            if separators == [":"]:
                return ["(", *contents[0], ":", *contents[1], ")"]
            return None
        if not separators:
            return ["[", *contents[0], "]"]
        if all(sep == "|" for sep in separators):
            return [_Alternation(contents)]
        if all(sep == ":" for sep in separators) and len(separators) <= 2:
            _, when_start, when_end = parts[-1]
            match = _WHEN.fullmatch(self.text, when_start, when_end)
            if match is None:
                return None
            before = contents[0] if len(separators) == 2 else []
            return [_Switch(before, contents[-2], match.group(1))]
        return None


def _switch_step(when: str, steps: int) -> int:
    """The last step that uses the "before" text: an integer is a step number, a number with a
    decimal point a fraction of the steps (truncated); at most ``steps``."""
    value = float(when)
    if "." in when:
        value *= steps
    if math.isinf(value):
        return steps if value > 0 else -1
    return min(steps, int(value))


def _scan(nodes: list[_Node], steps: int, boundaries: set[int]) -> bool:
    """Add every switch step of the tree to ``boundaries``; True if it alternates anywhere."""
    alternates = False
    for node in nodes:
        if isinstance(node, _Switch):
            step = _switch_step(node.when, steps)
            if step >= 1:
                boundaries.add(step)
            alternates |= _scan(node.before, steps, boundaries)
            alternates |= _scan(node.after, steps, boundaries)
        elif isinstance(node, _Alternation):
            alternates = True
            for option in node.options:
                _scan(option, steps, boundaries)
    return alternates


def _render(nodes: list[_Node], step: int, steps: int, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Switch):
            chosen = node.before if step <= _switch_step(node.when, steps) else node.after
            _render(chosen, step, steps, out)
        else:
            _render(node.options[(step - 1) % len(node.options)], step, steps, out)


def prompt_schedule(prompt: str, steps: int) -> Schedule:
    """Which text to use at each sampling step: ``[(end_at_step, text), ...]``.

    Steps are numbered 1..steps; an entry ``(3, "a ")`` after one ending at step 1 means steps
    2-3 use ``"a "``. End steps are strictly increasing and the last is ``steps``; consecutive
    steps with the same text share one entry.

    - ``[from:to:when]``, ``[to:when]`` (from nothing) and ``[from::when]`` (to nothing):
      ``from`` up to and including step ``when``, ``to`` after it. ``when`` is a step number,
      or with a decimal point a fraction of the steps (``int(fraction * steps)``). A step past
      the end (``5`` or ``1.5`` with 4 steps) means ``from`` throughout; 0, a negative number or
      ``0.0`` means ``to`` throughout. Blanks around ``when`` are allowed.
    - ``[a|b|c]`` alternates every step (step 1 ``a``, step 2 ``b``, ...); options may be
      empty (``[fe|]male``).
    - Constructs nest (``[a:[b:c:5]:3]``, editing inside alternation and vice versa) and may
      contain emphasis, which is kept as it is: round brackets, ``[x]`` with no ``:`` or ``|``,
      backslash escapes and everything else reach ``parse_emphasis`` unchanged.
    - A bracket that starts no valid construct is literal text. As in the mature UI, a ``|``
      outside a valid ``[...]`` alternation (``a | [b:3]``, ``(a|b)``), a lone backslash at
      the very end or before a newline, or nesting deeper than 100 makes the whole prompt
      literal: ``[(steps, prompt)]``.

    ``steps`` below 1 counts as 1. Extract extra-network tags first: their ``:`` would break a
    construct they sit in. Never raises on any prompt string.
    """
    steps = max(1, int(steps))
    if "[" not in prompt:
        return [(steps, prompt)]
    try:
        nodes = _EditingParser(prompt).parse()
    except _Unparsable:
        return [(steps, prompt)]
    boundaries = {steps}
    if _scan(nodes, steps, boundaries):
        boundaries.update(range(1, steps + 1))
    schedule: Schedule = []
    for step in sorted(boundaries):
        out: list[str] = []
        _render(nodes, step, steps, out)
        text = "".join(out)
        if schedule and schedule[-1][1] == text:
            schedule[-1] = (step, text)
        else:
            schedule.append((step, text))
    return schedule


def prompt_schedules(prompts: Sequence[str], steps: int) -> list[Schedule]:
    """``prompt_schedule`` for each prompt (repeated prompts are parsed once)."""
    cache: dict[str, Schedule] = {}
    result = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = prompt_schedule(prompt, steps)
        result.append(list(cache[prompt]))
    return result


def distinct_texts(schedule: Iterable[tuple[int, str]]) -> list[str]:
    """The different texts of a schedule, in order of first use (each needs encoding once)."""
    return list(dict.fromkeys(text for _, text in schedule))


def text_at_step(schedule: Sequence[tuple[int, str]], step: int) -> str:
    """The text a schedule uses at ``step`` (the last entry's past its end)."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[-1][1]


# ---------------------------------------------------------------------------------------------
# Extra networks
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExtraNetwork:
    """One ``<kind:name:arg1:arg2...>`` tag: ``<lora:name:0.8>`` is
    ``ExtraNetwork("lora", "name", ("0.8",))``."""

    kind: str
    name: str
    args: tuple[str, ...] = ()


# <kind:body>: kind a word; body anything up to the first ">", not starting another tag.
_EXTRA_NETWORK_TAG = re.compile(r"<(?P<kind>\w+):(?P<body>[^<>]+)>")


def extract_extra_networks(text: str) -> tuple[str, list[ExtraNetwork]]:
    """Remove ``<kind:name[:arg...]>`` tags from the text and return them in order.

    The body after ``kind:`` is split at ``:``; the first part is the name (spaces, dots,
    dashes, brackets and folder slashes allowed, kept exactly as written), the rest the args.
    The tag is replaced by nothing (``"a <lora:x:1>, b"`` -> ``"a , b"``). An unclosed tag
    (``<lora:x``), one with an empty body (``<lora:>``) or text between ``<`` and ``>`` that is
    not ``word:...`` is left in the text as it is. Never raises.
    """
    found: list[ExtraNetwork] = []

    def take(match: re.Match) -> str:
        name, *args = match.group("body").split(":")
        found.append(ExtraNetwork(match.group("kind"), name, tuple(args)))
        return ""

    return _EXTRA_NETWORK_TAG.sub(take, text), found


def _number_or_one(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        return 1.0
    return number if math.isfinite(number) else 1.0


def lora_weights(network: ExtraNetwork) -> tuple[float, float]:
    """(text-encoder weight, UNet weight) of a LoRA tag.

    ``<lora:x>`` -> (1, 1); ``<lora:x:w>`` -> (w, w); ``<lora:x:te:unet>`` -> (te, unet).
    Named args ``te=...`` and ``unet=...`` may stand in any position and win over positional
    ones; named args do not count as positions (``<lora:x:unet=0.2:0.5>`` -> (0.5, 0.2)). The
    UNet weight defaults to the text-encoder weight. A value that is not a finite number counts
    as 1.0. Never raises.
    """
    positional: list[str] = []
    named: dict[str, str] = {}
    for arg in network.args:
        key, equals, value = arg.partition("=")
        if equals and "=" not in value:
            named[key.strip()] = value
        else:
            positional.append(arg)
    te = _number_or_one(positional[0]) if positional else 1.0
    if "te" in named:
        te = _number_or_one(named["te"])
    unet = _number_or_one(positional[1]) if len(positional) > 1 else te
    if "unet" in named:
        unet = _number_or_one(named["unet"])
    return te, unet

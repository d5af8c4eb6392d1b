"""Prompt editing `[from:to:when]` and alternation `[a|b]`: which text each sampling step uses.

Pure functions on strings; see the package docstring for how they fit together.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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

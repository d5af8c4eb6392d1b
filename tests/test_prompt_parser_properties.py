"""Property tests of the prompt syntax parsers: over arbitrary text, over text made of the
syntax's own characters, and over structured prompts checked against a direct evaluation."""

from __future__ import annotations

import itertools
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.prompts.prompt_parser import (
    BREAK,
    MAX_WEIGHT,
    ExtraNetwork,
    extract_extra_networks,
    lora_weights,
    parse_emphasis,
    prompt_schedule,
    strip_emphasis,
    text_at_step,
)

UP = 1.1
DOWN = 1 / 1.1
EN = ExtraNetwork

# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

# Sized to keep the whole file at a few seconds; no example database is written.
FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
STRUCTURED = settings(FAST, max_examples=120)

# Text made of the syntax's own pieces, so that generated prompts hit the edge cases.
SYNTAX_PIECES = list("()[]:|\\<> ") + [
    "BREAK", " BREAK ", "break", "0", "1", "2", "3", ".", ".5", "1.5", "-", "+", "e", "a", "b",
    "\n", "\t", "lora", "<lora:x:0.5>", "(x:1.2)", "[a:b:2]", "[a|b]", "\\(", "\\[", "\\\\",
]
syntax_text = st.lists(st.sampled_from(SYNTAX_PIECES), max_size=40).map("".join)
any_text = st.one_of(st.text(max_size=80), syntax_text)
step_counts = st.integers(min_value=1, max_value=40)


def check_emphasis(pieces):
    assert pieces, "never empty"
    if pieces == [("", 1.0)]:
        return
    for index, (fragment, weight) in enumerate(pieces):
        assert isinstance(fragment, str) and isinstance(weight, float)
        if (fragment, weight) == BREAK:
            continue
        assert fragment, "no empty pieces"
        assert math.isfinite(weight) and 0.0 <= weight <= MAX_WEIGHT
        if index:
            previous = pieces[index - 1]
            assert previous == BREAK or previous[1] != weight, "equal neighbours merge"


@FAST
@given(any_text)
def test_emphasis_never_raises_and_weights_are_sane(text):
    check_emphasis(parse_emphasis(text))
    assert isinstance(strip_emphasis(text), str)


@FAST
@given(st.text(alphabet=st.characters(blacklist_characters="()[]:\\"), max_size=60))
def test_emphasis_of_text_without_syntax_is_one_piece(text):
    if "BREAK" in text:
        return
    assert parse_emphasis(text) == [(text, 1.0)]
    assert strip_emphasis(text) == text


def check_schedule(schedule, steps):
    ends = [end for end, _ in schedule]
    assert ends and ends[-1] == steps
    assert all(1 <= end <= steps for end in ends)
    assert all(a < b for a, b in itertools.pairwise(ends)), "strictly increasing"
    texts = [text for _, text in schedule]
    assert all(isinstance(text, str) for text in texts)
    assert all(a != b for a, b in itertools.pairwise(texts)), "identical neighbours merge"


@FAST
@given(any_text, step_counts)
def test_schedule_never_raises_and_is_well_formed(prompt, steps):
    check_schedule(prompt_schedule(prompt, steps), steps)


@FAST
@given(st.one_of(st.text(alphabet=st.characters(blacklist_characters="[]"), max_size=60),
                 syntax_text.map(lambda t: t.replace("[", "").replace("]", ""))),
       step_counts)
def test_schedule_of_prompt_without_square_brackets_is_unchanged(prompt, steps):
    assert prompt_schedule(prompt, steps) == [(steps, prompt)]


@FAST
@given(any_text)
def test_extra_networks_never_raise(text):
    rest, networks = extract_extra_networks(text)
    assert len(rest) <= len(text)
    if "<" not in text:
        assert (rest, networks) == (text, [])
    for network in networks:
        te, unet = lora_weights(network)
        assert math.isfinite(te) and math.isfinite(unet)


@FAST
@given(st.lists(st.text(max_size=8), max_size=5))
def test_lora_weights_never_raise(args):
    te, unet = lora_weights(EN("lora", "x", tuple(args)))
    assert math.isfinite(te) and math.isfinite(unet)


# Structured prompts with a known meaning, checked against a direct evaluation.

words = st.text(alphabet="abcxyz ", min_size=1, max_size=4)


def emphasis_trees():
    weights = st.sampled_from([None, "0.5", "1.3", "2", "0", " 1.25 "])
    return st.recursive(
        words,
        lambda children: st.one_of(
            st.tuples(st.just("("), st.lists(children, max_size=3), weights),
            st.tuples(st.just("["), st.lists(children, max_size=3), st.none()),
        ),
        max_leaves=12,
    )


def render_emphasis(tree):
    if isinstance(tree, str):
        return tree
    bracket, children, weight = tree
    inner = "".join(render_emphasis(child) for child in children)
    if bracket == "[":
        return f"[{inner}]"
    return f"({inner}:{weight})" if weight is not None else f"({inner})"


def expected_emphasis(tree):
    """Pieces with weights multiplied inner bracket first, as brackets close."""
    if isinstance(tree, str):
        return [(tree, 1.0)]
    bracket, children, weight = tree
    factor = DOWN if bracket == "[" else UP if weight is None else float(weight)
    return [(text, w * factor) for child in children for text, w in expected_emphasis(child)]


def merged(pieces):
    out = []
    for text, weight in pieces:
        if not text:
            continue
        weight = min(weight, MAX_WEIGHT)
        if out and out[-1][1] == weight:
            out[-1] = (out[-1][0] + text, weight)
        else:
            out.append((text, weight))
    return out or [("", 1.0)]


@STRUCTURED
@given(st.lists(emphasis_trees(), max_size=4))
def test_emphasis_matches_direct_evaluation(trees):
    text = "".join(render_emphasis(tree) for tree in trees)
    expected = merged([piece for tree in trees for piece in expected_emphasis(tree)])
    assert parse_emphasis(text) == expected


def editing_trees():
    return st.recursive(
        words,
        lambda children: st.one_of(
            st.tuples(st.just("switch"), st.lists(children, max_size=2),
                      st.lists(children, max_size=2),
                      st.one_of(st.integers(-2, 45).map(str),
                                st.sampled_from(["0.0", ".1", ".5", "0.75", "1.0", "1.5"]))),
            st.tuples(st.just("alt"), st.lists(st.lists(children, max_size=2),
                                               min_size=2, max_size=4)),
            st.tuples(st.just("emph"), st.lists(children, max_size=2)),
        ),
        max_leaves=10,
    )


def render_editing(tree):
    if isinstance(tree, str):
        return tree
    if tree[0] == "switch":
        _, before, after, when = tree
        return f"[{''.join(map(render_editing, before))}:{''.join(map(render_editing, after))}:{when}]"
    if tree[0] == "alt":
        return "[" + "|".join("".join(map(render_editing, option)) for option in tree[1]) + "]"
    return "(" + "".join(map(render_editing, tree[1])) + ")"


def text_at(tree, step, steps):
    if isinstance(tree, str):
        return tree
    if tree[0] == "switch":
        _, before, after, when = tree
        switch = int(float(when) * steps) if "." in when else int(when)
        chosen = before if step <= switch else after
        return "".join(text_at(t, step, steps) for t in chosen)
    if tree[0] == "alt":
        option = tree[1][(step - 1) % len(tree[1])]
        return "".join(text_at(t, step, steps) for t in option)
    return "(" + "".join(text_at(t, step, steps) for t in tree[1]) + ")"


@STRUCTURED
@given(st.lists(editing_trees(), max_size=3), step_counts)
def test_schedule_matches_direct_evaluation(trees, steps):
    prompt = "".join(render_editing(tree) for tree in trees)
    schedule = prompt_schedule(prompt, steps)
    check_schedule(schedule, steps)
    for step in range(1, steps + 1):
        expected = "".join(text_at(tree, step, steps) for tree in trees)
        assert text_at_step(schedule, step) == expected, (prompt, step)

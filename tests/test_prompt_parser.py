"""Prompt syntax: emphasis, prompt editing / alternation and extra-network tags (COMPAT.md,
"Prompt syntax"). Table tests of the documented behaviour and edge cases, then property tests
over arbitrary text and over text made of the syntax's own characters."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.prompt_parser import (
    BREAK,
    MAX_WEIGHT,
    ExtraNetwork,
    distinct_texts,
    extract_extra_networks,
    lora_weights,
    parse_emphasis,
    prompt_schedule,
    prompt_schedules,
    strip_emphasis,
    text_at_step,
)

UP = 1.1
DOWN = 1 / 1.1

# ---------------------------------------------------------------------------------------------
# Emphasis
# ---------------------------------------------------------------------------------------------

EMPHASIS_CASES = [
    # COMPAT.md
    ("an (important) word", [("an ", 1.0), ("important", UP), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", UP)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", UP)]),
    # basics
    ("", [("", 1.0)]),
    ("normal text", [("normal text", 1.0)]),
    ("((x))", [("x", UP * UP)]),
    ("(((x)))", [("x", UP * UP * UP)]),
    ("[x]", [("x", DOWN)]),
    ("[[x]]", [("x", DOWN * DOWN)]),
    ("[unbalanced", [("unbalanced", DOWN)]),
    ("a ((b) c)", [("a ", 1.0), ("b", UP * UP), (" c", UP)]),
    # explicit weights
    ("(x:1.5)", [("x", 1.5)]),
    ("(x:0.5)", [("x", 0.5)]),
    ("(x: 1.3 )", [("x", 1.3)]),
    ("(x:+2)", [("x", 2.0)]),
    ("(x:.5)", [("x", 0.5)]),
    ("(x:2.)", [("x", 2.0)]),
    ("(x:0)", [("x", 0.0)]),
    ("(x:1)", [("x", 1.0)]),
    ("a (x:1) b", [("a x b", 1.0)]),
    # an explicit weight replaces the 1.1 of its own bracket and multiplies with outer ones
    ("(a (b:2))", [("a ", UP), ("b", 2.0 * UP)]),
    ("((a:1.2):1.5)", [("a", 1.2 * 1.5)]),
    ("[(a:2)]", [("a", 2.0 * DOWN)]),
    # the explicit weight closes the innermost round bracket, even past an open square one
    ("(a[b:2)c]", [("a", 2.0), ("b", 2.0 * DOWN), ("c", DOWN)]),
    # multiplications happen as brackets close (inner first), unclosed ones at the end
    ("([a)]", [("a", UP * DOWN)]),
    ("[(a]", [("a", DOWN * UP)]),
    # the mature UI's documented example, bit for bit
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
        ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    # ":" that is no weight is text
    ("a:b", [("a:b", 1.0)]),
    ("(a:b)", [("a:b", UP)]),
    ("(x:1.2.3)", [("x:1.2.3", UP)]),
    ("(x:.)", [("x:.", UP)]),
    ("(x:-)", [("x:-", UP)]),
    ("(x:1e3)", [("x:1e3", UP)]),
    ("(x:1.5", [("x:1.5", UP)]),
    ("x:1.5)", [("x:1.5)", 1.0)]),
    ("[x:1.5]", [("x:1.5", DOWN)]),
    ("(a:1.2:b)", [("a:1.2:b", UP)]),
    # stray closing brackets are text
    ("a)b]c", [("a)b]c", 1.0)]),
    (")(x)", [(")", 1.0), ("x", UP)]),
    ("(a))", [("a", UP), (")", 1.0)]),
    ("()", [("", 1.0)]),
    ("()[]x", [("x", 1.0)]),
    # escapes
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("\\(x\\)", [("(x)", 1.0)]),
    ("\\[x\\]", [("[x]", 1.0)]),
    ("(\\))", [(")", UP)]),
    ("\\\\", [("\\", 1.0)]),
    ("\\\\(x)", [("\\", 1.0), ("x", UP)]),
    ("\\(x)", [("(x)", 1.0)]),
    ("a\\b", [("a\\b", 1.0)]),
    ("a\\", [("a\\", 1.0)]),
    ("(a\\:1.5)", [("a\\", 1.5)]),
    # clamping (documented deviation: weights stay finite and within [0, 100])
    ("(x:-1)", [("x", 0.0)]),
    ("(x:-0.5) y", [("x", 0.0), (" y", 1.0)]),
    ("(x:1000)", [("x", MAX_WEIGHT)]),
    ("(((((x:100)))))", [("x", MAX_WEIGHT)]),
    ("((x:200):0.5)", [("x", MAX_WEIGHT)]),
    ("(x:" + "9" * 400 + ")", [("x", MAX_WEIGHT)]),
    ("((x:" + "9" * 400 + "):0)", [("x", 0.0)]),
    ("(x:0)(y:0)", [("xy", 0.0)]),
    # BREAK
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("BREAK", [BREAK]),
    ("BREAK a", [BREAK, ("a", 1.0)]),
    ("a BREAK", [("a", 1.0), BREAK]),
    ("a BREAK BREAK b", [("a", 1.0), BREAK, BREAK, ("b", 1.0)]),
    ("a\nBREAK\n\nb", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("a,BREAK,b", [("a,", 1.0), BREAK, (",b", 1.0)]),
    ("(a BREAK b)", [("a", UP), BREAK, ("b", UP)]),
    ("(a)BREAK(a)", [("a", UP), BREAK, ("a", UP)]),
    ("(BREAK)", [BREAK]),
    ("(x:1.5) BREAK (x:1.5)", [("x", 1.5), BREAK, ("x", 1.5)]),
    ("a break b", [("a break b", 1.0)]),
    ("a Break b", [("a Break b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("BREAKING", [("BREAKING", 1.0)]),
    ("BREAK_1", [("BREAK_1", 1.0)]),
    ("\\(BREAK\\)", [("(", 1.0), BREAK, (")", 1.0)]),
]


@pytest.mark.parametrize("text, expected", EMPHASIS_CASES)
def test_parse_emphasis(text, expected):
    assert parse_emphasis(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("", ""),
    ("plain", "plain"),
    ("(a:1.2) BREAK [b]", "a b"),
    ("BREAK a BREAK", "a"),
    ("\\(x\\) (y:0.5)", "(x) y"),
    ("a:b)", "a:b)"),
])
def test_strip_emphasis(text, expected):
    assert strip_emphasis(text) == expected


# ---------------------------------------------------------------------------------------------
# Prompt editing and alternation
# ---------------------------------------------------------------------------------------------

def every_step(*texts):
    return [(step, text) for step, text in enumerate(texts, start=1)]


SCHEDULE_CASES = [
    # COMPAT.md
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("[fe|]male", 10, every_step(*["female", "male"] * 5)),
    # the mature UI's documented examples
    ("test", 10, [(10, "test")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 10, every_step(*["a", "(b:1.1)"] * 5)),
    # its stale doctest: the code there (and here) uses a prompt with a stray "|" literally
    ("a [{b|d{:.5] c", 10, [(10, "a [{b|d{:.5] c")]),
    # from/to/when forms
    ("[x:y:3]", 10, [(3, "x"), (10, "y")]),
    ("[x::3]", 10, [(3, "x"), (10, "")]),
    ("[:y:3]", 10, [(3, ""), (10, "y")]),
    ("[x:y: 3 ]", 10, [(3, "x"), (10, "y")]),
    ("[x:y:\t3\n]", 10, [(3, "x"), (10, "y")]),
    ("[x:y:+3]", 10, [(3, "x"), (10, "y")]),
    # when: edges
    ("[x:y:0]", 10, [(10, "y")]),
    ("[x:y:-3]", 10, [(10, "y")]),
    ("[x:y:1]", 10, [(1, "x"), (10, "y")]),
    ("[x:y:9]", 10, [(9, "x"), (10, "y")]),
    ("[x:y:10]", 10, [(10, "x")]),
    ("[x:y:20]", 10, [(10, "x")]),
    ("[x:y:0.0]", 10, [(10, "y")]),
    ("[x:y:1.0]", 10, [(10, "x")]),
    ("[x:y:1.5]", 10, [(10, "x")]),
    ("[x:y:.25]", 10, [(2, "x"), (10, "y")]),
    ("[x:y:0.99]", 10, [(9, "x"), (10, "y")]),
    ("[x:y:.5]", 7, [(3, "x"), (7, "y")]),
    ("[x:y:3.]", 10, [(10, "x")]),            # "3." is a fraction: 3 * 10 -> past the end
    ("[x:y:1e3]", 10, [(10, "x")]),
    ("[x:y:5e-1]", 10, [(10, "y")]),          # no decimal point: a step number, int(0.5) = 0
    ("[x:y:2.5e-1]", 10, [(2, "x"), (10, "y")]),
    ("[x:y:1e999]", 10, [(10, "x")]),
    ("[x:y:-1e999]", 10, [(10, "y")]),
    ("[x:y:3]", 1, [(1, "x")]),
    ("[x:y:1]", 1, [(1, "x")]),
    # nesting
    ("[a:[b:c:5]:3]", 10, [(3, "a"), (5, "b"), (10, "c")]),
    ("[[a:b:5]:c:3]", 10, [(3, "a"), (10, "c")]),
    ("[[a:b:2]:c:3]", 10, [(2, "a"), (3, "b"), (10, "c")]),
    ("[a:b:3] [c:d:6]", 10, [(3, "a c"), (6, "b c"), (10, "b d")]),
    ("[a:b:3][c:d:3]", 10, [(3, "ac"), (10, "bd")]),
    ("(a [b:c:2])", 3, [(2, "(a b)"), (3, "(a c)")]),
    ("[a:(b:1.2):3]", 10, [(3, "a"), (10, "(b:1.2)")]),
    ("[(a:1.2) [b]:c:2]", 4, [(2, "(a:1.2) [b]"), (4, "c")]),
    # alternation
    ("[a|b|c]", 7, every_step("a", "b", "c", "a", "b", "c", "a")),
    ("[a|b]", 1, [(1, "a")]),
    ("[a|a]", 10, [(10, "a")]),
    ("[|a]", 3, every_step("", "a", "")),
    ("[fe|||]male", 10, [(1, "female"), (4, "male"), (5, "female"), (8, "male"),
                         (9, "female"), (10, "male")]),
    ("[a|b] [c|d|e]", 6, every_step("a c", "b d", "a e", "b c", "a d", "b e")),
    ("[a|[b|c]]", 4, every_step("a", "c", "a", "c")),
    ("[[a:b:2]|c]", 4, every_step("a", "c", "b", "c")),
    ("[[a|b]:c:3]", 5, [(1, "a"), (2, "b"), (3, "a"), (5, "c")]),
    ("[a|(b:0.5)]", 2, every_step("a", "(b:0.5)")),
    # emphasis brackets are not editing
    ("[a]", 10, [(10, "[a]")]),
    ("[[a]] (b) (c:1.2)", 10, [(10, "[[a]] (b) (c:1.2)")]),
    ("[a] [b:2]", 4, [(2, "[a] "), (4, "[a] b")]),
    # not editing syntax: used literally
    ("[a:b]", 10, [(10, "[a:b]")]),
    ("[a:b:c:3]", 10, [(10, "[a:b:c:3]")]),
    ("[a:b:c]", 10, [(10, "[a:b:c]")]),
    ("[a:b:3", 10, [(10, "[a:b:3")]),
    ("a [b:3]]", 10, [(3, "a ]"), (10, "a b]")]),
    ("[a:b:3)", 10, [(10, "[a:b:3)")]),
    ("[a:b [c:3]]", 10, [(3, "[a:b ]"), (10, "[a:b c]")]),
    ("]a[b:3][", 10, [(3, "]a["), (10, "]ab[")]),
    ("[a:b:3 4]", 10, [(10, "[a:b:3 4]")]),
    ("[a:b:.]", 10, [(10, "[a:b:.]")]),
    # a "|" outside a valid alternation makes the whole prompt literal (as in the mature UI)
    ("a | [b:3]", 10, [(10, "a | [b:3]")]),
    ("(a|b) [c:3]", 10, [(10, "(a|b) [c:3]")]),
    ("[a|b:3]", 10, [(10, "[a|b:3]")]),
    ("[a|b", 10, [(10, "[a|b")]),
    ("[a|b]|c", 10, [(10, "[a|b]|c")]),
    ("[a|b \\|c]", 2, every_step("a", "b \\|c")),
    # escapes are kept for the emphasis parser
    ("\\[a:3]", 10, [(10, "\\[a:3]")]),
    ("\\[a:b:3\\]", 10, [(10, "\\[a:b:3\\]")]),
    ("[a\\:b:3]", 10, [(3, ""), (10, "a\\:b")]),
    ("[\\(a\\):b:3]", 10, [(3, "\\(a\\)"), (10, "b")]),
    ("\\\\[a:3]", 10, [(3, "\\\\"), (10, "\\\\a")]),
    ("[a:b:3] \\", 10, [(10, "[a:b:3] \\")]),  # a lone trailing backslash: unparsable
    # extra-network tags pass through (extract them first)
    ("<lora:x:0.5> [a:b:3]", 10, [(3, "<lora:x:0.5> a"), (10, "<lora:x:0.5> b")]),
    ("[a:b:3] BREAK c", 10, [(3, "a BREAK c"), (10, "b BREAK c")]),
    # steps below 1 count as 1
    ("[a:b:3]", 0, [(1, "a")]),
    ("plain", -5, [(1, "plain")]),
]


@pytest.mark.parametrize("prompt, steps, expected", SCHEDULE_CASES)
def test_prompt_schedule(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_deep_nesting_is_literal_not_an_error():
    prompt = "[" * 5000 + "a:b:3" + "]" * 5000
    assert prompt_schedule(prompt, 10) == [(10, prompt)]
    prompt = "(" * 5000 + "[a:b:3]"
    assert prompt_schedule(prompt, 10) == [(10, prompt)]
    assert parse_emphasis("(" * 5000 + "x") == [("x", MAX_WEIGHT)]
    [(fragment, weight)] = parse_emphasis("[" * 5000 + "x")
    assert fragment == "x" and 0.0 < weight < 1e-200


def test_moderate_nesting_works():
    prompt = "[" * 30 + "a:b:3" + "]" * 30
    assert prompt_schedule(prompt, 10) == [(3, "[" * 29 + "a" + "]" * 29),
                                          (10, "[" * 29 + "b" + "]" * 29)]


def test_prompt_schedules_and_helpers():
    schedules = prompt_schedules(["a [b:3]", "c", "a [b:3]"], 10)
    assert schedules == [[(3, "a "), (10, "a b")], [(10, "c")], [(3, "a "), (10, "a b")]]
    assert schedules[0] is not schedules[2]
    alternating = prompt_schedule("[fe|]male", 10)
    assert distinct_texts(alternating) == ["female", "male"]
    schedule = prompt_schedule("a [b:3]", 10)
    assert [text_at_step(schedule, step) for step in (1, 3, 4, 10, 11)] == [
        "a ", "a ", "a b", "a b", "a b"]


# ---------------------------------------------------------------------------------------------
# Extra networks
# ---------------------------------------------------------------------------------------------

EN = ExtraNetwork

EXTRA_NETWORK_CASES = [
    ("<lora:name:0.8>", "", [EN("lora", "name", ("0.8",))]),
    ("a <lora:x:1>, b", "a , b", [EN("lora", "x", ("1",))]),
    ("<lora:x>", "", [EN("lora", "x", ())]),
    ("<lora:x:0.5:0.7>", "", [EN("lora", "x", ("0.5", "0.7"))]),
    ("<lora:x:te=0.5:unet=0.2>", "", [EN("lora", "x", ("te=0.5", "unet=0.2"))]),
    ("<lora:my lora v1.5-final:0.5> cat", " cat", [EN("lora", "my lora v1.5-final", ("0.5",))]),
    ("<lora:sub/dir/style (v2) [x]:1>", "", [EN("lora", "sub/dir/style (v2) [x]", ("1",))]),
    ("<lyco:a:1> x <hypernet:h:0.3>", " x ", [EN("lyco", "a", ("1",)), EN("hypernet", "h", ("0.3",))]),
    ("<lora:a:1><lora:a:1>", "", [EN("lora", "a", ("1",))] * 2),
    # inside emphasis and editing brackets
    ("(masterpiece <lora:x:0.7>)", "(masterpiece )", [EN("lora", "x", ("0.7",))]),
    ("[a:<lora:x:1>:3]", "[a::3]", [EN("lora", "x", ("1",))]),
    ("[<lora:x:1>|b]", "[|b]", [EN("lora", "x", ("1",))]),
    # malformed tags stay
    ("<lora:x", "<lora:x", []),
    ("a <lora:x:1 b", "a <lora:x:1 b", []),
    ("<lora:x:1 <lora:y:1>", "<lora:x:1 ", [EN("lora", "y", ("1",))]),
    ("<lora:>", "<lora:>", []),
    ("< lora:x:1>", "< lora:x:1>", []),
    ("<:x:1>", "<:x:1>", []),
    ("<lora>", "<lora>", []),
    ("<lo-ra:x>", "<lo-ra:x>", []),
    ("a > b < c", "a > b < c", []),
    ("", "", []),
    # odd but well-formed
    ("<lora::>", "", [EN("lora", "", ("",))]),
]


@pytest.mark.parametrize("text, rest, networks", EXTRA_NETWORK_CASES)
def test_extract_extra_networks(text, rest, networks):
    assert extract_extra_networks(text) == (rest, networks)


def test_extra_network_is_frozen_and_hashable():
    network = EN("lora", "x", ("1",))
    with pytest.raises(AttributeError):
        network.name = "y"
    assert {network, EN("lora", "x", ("1",))} == {network}


@pytest.mark.parametrize("args, expected", [
    ((), (1.0, 1.0)),
    (("0.8",), (0.8, 0.8)),
    (("0.5", "0.7"), (0.5, 0.7)),
    (("-0.5",), (-0.5, -0.5)),
    ((" 0.5 ",), (0.5, 0.5)),
    (("te=0.5",), (0.5, 0.5)),
    (("unet=0.7",), (1.0, 0.7)),
    (("te=0.3", "unet=0.4"), (0.3, 0.4)),
    (("unet=0.4", "te=0.3"), (0.3, 0.4)),
    (("0.8", "unet=0.2"), (0.8, 0.2)),
    (("unet=0.2", "0.5"), (0.5, 0.2)),
    (("0.5", "0.7", "te=0.1"), (0.1, 0.7)),
    (("0.5", "0.7", "8"), (0.5, 0.7)),            # a third positional (LoRA dim) is ignored
    (("abc",), (1.0, 1.0)),
    (("0.5", "abc"), (0.5, 1.0)),
    (("te=x",), (1.0, 1.0)),
    (("nan",), (1.0, 1.0)),
    (("inf", "-inf"), (1.0, 1.0)),
    (("",), (1.0, 1.0)),
    (("a=b=c",), (1.0, 1.0)),
    (("dyn=4", "0.6"), (0.6, 0.6)),
])
def test_lora_weights(args, expected):
    assert lora_weights(EN("lora", "x", args)) == expected


def test_extracted_lora_weights():
    _, networks = extract_extra_networks("<lora:a:0.6> <lora:b:0.2:0.9> <lora:c>")
    assert [lora_weights(n) for n in networks] == [(0.6, 0.6), (0.2, 0.9), (1.0, 1.0)]


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

"""Prompt syntax: emphasis, prompt editing / alternation and extra-network tags (COMPAT.md,
"Prompt syntax"). Table tests of the documented behaviour and edge cases; the property tests
are in test_prompt_parser_properties.py."""

from __future__ import annotations

import pytest

from engine.prompts.prompt_parser import (
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

"""Prompt styles in styles.csv: the ecosystem's apply rule, saving, hand edits and damaged files."""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import threading

import pytest

from engine.errors import RequestError
from engine.prompts.styles import Style, StyleStore, merge_prompt


def write_csv(path, rows, *, encoding="utf-8", bom=False, newline="\r\n"):
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator=newline).writerows(rows)
    data = buffer.getvalue().encode(encoding)
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + data)


def read_rows(path):
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle))


def touch_later(path):
    """Move the file's mtime forward, so a same-size edit within one clock tick is still seen."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "styles.csv"
    write_csv(path, [
        ["name", "prompt", "negative_prompt"],
        ["wrap", "masterpiece, {prompt}, 4k", "lowres, {prompt}"],
        ["oil", "oil painting", "photo"],
        ["empty", "", ""],
    ])
    return StyleStore(path)


# The rule, with worked examples


@pytest.mark.parametrize("style_text, prompt, expected", [
    ("masterpiece, {prompt}, 4k", "a cat", "masterpiece, a cat, 4k"),
    ("{prompt}, by {prompt}", "x", "x, by x"),               # every placeholder is replaced
    ("{prompt} in snow", "", " in snow"),                     # placeholder with an empty prompt
    ("oil painting", "a cat", "a cat, oil painting"),         # appended after ", "
    ("oil painting", "", "oil painting"),                     # no leading separator
    ("oil painting", "  a cat  ", "a cat, oil painting"),     # pieces are stripped
    ("", "a cat", "a cat"),                                   # empty style text adds nothing
    ("   ", "a cat", "a cat"),
    ("", "", ""),
])
def test_merge_rule_worked_examples(style_text, prompt, expected):
    assert merge_prompt(style_text, prompt) == expected


def test_apply_placeholder_and_append(store):
    assert store.apply("a cat", "blurry", ["wrap"]) == ("masterpiece, a cat, 4k", "lowres, blurry")
    assert store.apply("a cat", "blurry", ["oil"]) == ("a cat, oil painting", "blurry, photo")
    assert store.apply("", "", ["oil"]) == ("oil painting", "photo")
    assert store.apply("a cat", "", ["empty"]) == ("a cat", "")


def test_apply_several_styles_in_order(store):
    assert store.apply("a cat", "blurry", ["oil", "wrap"]) == (
        "masterpiece, a cat, oil painting, 4k", "lowres, blurry, photo")
    assert store.apply("a cat", "blurry", ["wrap", "oil"]) == (
        "masterpiece, a cat, 4k, oil painting", "lowres, blurry, photo")


def test_apply_with_no_styles_leaves_prompts_alone(store):
    assert store.apply("  a cat ", "x", []) == ("  a cat ", "x")
    assert store.apply("a cat", "x", None) == ("a cat", "x")
    assert store.apply("a cat", "x", ["", " "]) == ("a cat", "x")
    assert store.apply("a cat", "", "oil") == ("a cat, oil painting", "photo")  # one name as a string


def test_unknown_style_names_are_left_out_and_named(store):
    # As in the web UI these files come from: a style that no longer exists does not fail a job.
    assert store.apply("a cat", "", ["oil", "nope", "missing too"]) == ("a cat, oil painting", "photo")
    assert store.unknown(["oil", "nope", "missing too", "nope"]) == ["nope", "missing too"]
    assert store.unknown_note(["oil", "nope"]) == "Style not found, left out: 'nope'"
    assert store.unknown_note(["oil"]) is None


def test_unknown_style_when_there_are_none(tmp_path):
    store = StyleStore(tmp_path / "styles.csv")
    assert store.apply("a", "", ["x"]) == ("a", "")
    assert store.unknown(["x"]) == ["x"]


def test_several_style_files(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("name,prompt,negative_prompt\nshared,from a,\nonly-a,A,\n", encoding="utf-8")
    second.write_text("name,prompt,negative_prompt\nshared,from b,\nonly-b,B,\n", encoding="utf-8")
    store = StyleStore([first, second])
    assert store.names() == ["shared", "only-a", "only-b"]
    assert store.apply("x", "", ["shared"]) == ("x, from b", "")  # the later file wins
    store.save(Style("new", "N", ""))            # new styles go to the first file
    store.save(Style("only-b", "B2", ""))        # a changed one stays where it is
    assert "new" in StyleStore(first).names() and "new" not in StyleStore(second).names()
    assert StyleStore(second).get("only-b") == Style("only-b", "B2", "")
    assert store.delete("shared") and store.names() == ["only-a", "new", "only-b"]


# Reading


def test_missing_file_means_no_styles(tmp_path):
    store = StyleStore(tmp_path / "nothing-here.csv")
    assert store.styles() == [] and store.names() == []


def test_names_are_stripped_unique_first_wins(tmp_path, caplog):
    path = tmp_path / "styles.csv"
    write_csv(path, [["name", "prompt", "negative_prompt"],
                     ["  spaced  ", "p1", "n1"], ["spaced", "p2", "n2"], ["", "orphan", ""]])
    with caplog.at_level(logging.WARNING, logger="engine.prompts.styles"):
        styles = StyleStore(path).styles()
    assert styles == [Style("spaced", "p1", "n1")]
    assert "more than once" in caplog.text


def test_hand_edit_is_picked_up(store):
    assert store.names() == ["wrap", "oil", "empty"]
    write_csv(store.path, [["name", "prompt", "negative_prompt"], ["oil", "watercolor", ""]])
    touch_later(store.path)
    assert store.names() == ["oil"]
    assert store.apply("a cat", "", ["oil"]) == ("a cat, watercolor", "")
    # A same-size edit is still seen (the mtime moved).
    write_csv(store.path, [["name", "prompt", "negative_prompt"], ["oil", "watercolou", ""]])
    touch_later(store.path)
    assert store.get("oil").prompt == "watercolou"
    store.path.unlink()
    assert store.styles() == []


def test_bom_from_excel_is_read(tmp_path):
    path = tmp_path / "styles.csv"
    write_csv(path, [["name", "prompt", "negative_prompt"], ["café", "crème brûlée, {prompt}", "x"]],
              bom=True)
    store = StyleStore(path)
    assert store.names() == ["café"]
    assert store.apply("a cat", "", ["café"]) == ("crème brûlée, a cat", "x")
    # Saving keeps the BOM (Excel needs it to read UTF-8) and does not double it.
    store.save(Style("new", "n", ""))
    raw = path.read_bytes()
    assert raw.startswith(codecs.BOM_UTF8) and not raw[3:].startswith(codecs.BOM_UTF8)
    assert store.names() == ["café", "new"]


def test_windows_1252_file_from_old_excel(tmp_path, caplog):
    path = tmp_path / "styles.csv"
    path.write_bytes("name,prompt,negative_prompt\r\ncafé,“smart” quotes,\r\n".encode("cp1252"))
    with caplog.at_level(logging.WARNING, logger="engine.prompts.styles"):
        assert StyleStore(path).styles() == [Style("café", "“smart” quotes", "")]
    assert "not UTF-8" in caplog.text


def test_undecodable_bytes_do_not_raise(tmp_path, caplog):
    path = tmp_path / "styles.csv"
    # 0x81 is undefined in Windows-1252 as well: that row cannot be read; the rest still is.
    path.write_bytes(b"name,prompt,negative_prompt\r\nok,fine,\r\nbad\x81,x\x81y,\r\nafter,p,\r\n")
    with caplog.at_level(logging.WARNING, logger="engine.prompts.styles"):
        styles = StyleStore(path).styles()
    assert styles == [Style("ok", "fine", ""), Style("after", "p", "")]
    assert "line 3 cannot be read (bytes that are not UTF-8 text)" in caplog.text


def test_ragged_rows_and_missing_header(tmp_path, caplog):
    path = tmp_path / "styles.csv"
    path.write_text("name,prompt,negative_prompt\nshort,only prompt\nlong,p,n,extra,more\nname-only\n",
                    encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="engine.prompts.styles"):
        styles = StyleStore(path).styles()
    assert styles == [Style("short", "only prompt", ""), Style("long", "p", "n"),
                      Style("name-only", "", "")]
    assert "do not have 3 fields" in caplog.text

    headerless = tmp_path / "headerless.csv"
    headerless.write_text("a,pa,na\nb,pb,nb\n", encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.prompts.styles"):
        assert StyleStore(headerless).styles() == [Style("a", "pa", "na"), Style("b", "pb", "nb")]
    assert "no header" in caplog.text


def test_header_columns_in_other_order_and_case(tmp_path):
    path = tmp_path / "styles.csv"
    write_csv(path, [["Negative Prompt", "Name", "Prompt", "notes"], ["neg", "s", "pos", "mine"]])
    assert StyleStore(path).styles() == [Style("s", "pos", "neg")]


def test_broken_quoting_and_nul_bytes_never_raise(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(b'name,prompt,negative_prompt\r\ngood,"fine",\r\nbroken,"never closed\r\nmore\x00\r\n')
    styles = StyleStore(path).styles()
    assert styles == [Style("good", "fine", "")]  # the broken rows are kept, not used
    for garbage in (b"\x00\x00\x00", b"\xff\xfe\x00junk", b",,,\r\n,,\r\n", b""):
        path.write_bytes(garbage)
        touch_later(path)
        StyleStore(path).styles()  # must not raise


def test_semicolon_separated_file(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(codecs.BOM_UTF8 + b"name;prompt;negative_prompt\r\ns;a, b;c\r\n")
    store = StyleStore(path)
    assert store.styles() == [Style("s", "a, b", "c")]
    store.save(Style("t", "x", ""))
    assert path.read_bytes() == codecs.BOM_UTF8 + b"name;prompt;negative_prompt\r\ns;a, b;c\r\nt;x;\r\n"


# Writing


TRICKY = Style("Tricky, \"quoted\" name", 'a, b, "c"\nsecond line, {prompt}', "ünïcödé 🐱, 日本語\r\nx")


def test_save_replace_delete_round_trip(tmp_path):
    path = tmp_path / "styles.csv"
    store = StyleStore(path)
    assert store.save(Style("  first  ", "p1", "n1")) == Style("first", "p1", "n1")
    store.save(TRICKY)
    store.save(Style("third", "", "only negative"))
    assert path.exists()

    fresh = StyleStore(path)  # read back from the file alone
    assert fresh.styles() == [Style("first", "p1", "n1"), TRICKY, Style("third", "", "only negative")]
    assert read_rows(path)[0] == ["name", "prompt", "negative_prompt"]
    assert fresh.apply("cat", "", [TRICKY.name]) == ('a, b, "c"\nsecond line, cat', "ünïcödé 🐱, 日本語\r\nx")

    store.save(Style("first", "p1 new", ""))
    assert StyleStore(path).styles() == [Style("first", "p1 new", ""), TRICKY,
                                         Style("third", "", "only negative")]
    assert store.delete(TRICKY.name) is True
    assert store.delete("not there") is False
    assert StyleStore(path).styles() == [Style("first", "p1 new", ""), Style("third", "", "only negative")]
    assert [p.name for p in tmp_path.iterdir()] == ["styles.csv"]  # no temporary files left


def test_save_keeps_unknown_columns_and_rows_untouched(tmp_path):
    path = tmp_path / "styles.csv"
    original = [
        ["name", "prompt", "negative_prompt", "description", "author"],
        ["keep", "a, \"q\"\nb", "neg", "my notes, with comma", "me"],
        ["", "nameless row", "", "", ""],
        ["ragged", "p"],
        ["change", "old", "old neg", "describes change", "you"],
        ["keep", "duplicate", "", "", ""],
    ]
    write_csv(path, original)
    store = StyleStore(path)
    store.save(Style("change", "new", "new neg"))
    store.save(Style("added", "x", "y"))
    rows = read_rows(path)
    assert rows[:4] == original[:4]
    assert rows[4] == ["change", "new", "new neg", "describes change", "you"]
    assert rows[5] == original[5]
    assert rows[6] == ["added", "x", "y", "", ""]
    store.delete("keep")  # removes every row of that name, so an older duplicate cannot resurface
    assert [r[0] for r in read_rows(path)] == ["name", "", "ragged", "change", "added"]


def test_save_keeps_line_endings(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(b"name,prompt,negative_prompt\nold,p,\n")
    StyleStore(path).save(Style("new", "q", ""))
    assert path.read_bytes() == b"name,prompt,negative_prompt\nold,p,\nnew,q,\n"


def test_save_adds_a_missing_column_and_header(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text("name,prompt\na,pa\n", encoding="utf-8")
    StyleStore(path).save(Style("b", "pb", "nb"))
    assert read_rows(path) == [["name", "prompt", "negative_prompt"], ["a", "pa"], ["b", "pb", "nb"]]
    assert StyleStore(path).styles() == [Style("a", "pa", ""), Style("b", "pb", "nb")]

    headerless = tmp_path / "headerless.csv"
    headerless.write_text("a,pa,na\n", encoding="utf-8")
    StyleStore(headerless).save(Style("b", "pb", ""))
    assert read_rows(headerless) == [["name", "prompt", "negative_prompt"], ["a", "pa", "na"],
                                     ["b", "pb", ""]]


def test_save_needs_a_name(tmp_path):
    with pytest.raises(RequestError) as caught:
        StyleStore(tmp_path / "styles.csv").save(Style("   ", "p", ""))
    assert caught.value.field == "name"
    assert not (tmp_path / "styles.csv").exists()


def test_concurrent_saves_lose_nothing(tmp_path):
    store = StyleStore(tmp_path / "styles.csv")

    def worker(index):
        for j in range(10):
            store.save(Style(f"s{index}-{j}", f"p{index}", ""))
            store.styles()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(StyleStore(store.path).names()) == sorted(f"s{i}-{j}" for i in range(4) for j in range(10))

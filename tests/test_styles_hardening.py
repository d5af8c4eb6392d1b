"""Styles never vanish: long styles, damaged rows and formula-like cells in styles.csv.

Saving goes through `ui.prompt_tools.save_style`, the function behind the UI's "Save style"
button, which calls `StyleStore.save` as the engine does.
"""

from __future__ import annotations

import csv
import logging

import pytest

from engine.errors import RequestError
from engine.prompts.styles import Style, StyleStore
from engine.prompts.styles_csv import escape_cell, unescape_cell
from engine.request import MAX_PROMPT_CHARS
from ui.prompt_tools import save_style

HEADER = b"name,prompt,negative_prompt\r\n"


def long_text(length: int) -> str:
    """Text that needs CSV quoting throughout: commas, quotes, line breaks, non-ASCII."""
    unit = 'masterpiece, "quoted", caf\u00e9 \U0001F431\r\nline, '
    return (unit * (length // len(unit) + 1))[:length]


def csv_bytes(rows: list[list[str]]) -> bytes:
    lines = []
    for row in rows:
        cells = ['"' + cell.replace('"', '""') + '"' if any(c in cell for c in ',"\r\n') else cell
                 for cell in row]
        lines.append(",".join(cells) + "\r\n")
    return "".join(lines).encode("utf-8")


# Long styles


def test_a_style_past_the_csv_modules_field_limit_reads_back_with_its_neighbours(tmp_path):
    # A style of 200,000 characters, as another web UI (which has no length cap) may write it,
    # between two ordinary styles: the csv module stopped reading at it (131,072 characters).
    path = tmp_path / "styles.csv"
    huge = long_text(200_000)
    path.write_bytes(HEADER + csv_bytes([["before", "b", ""], ["huge", huge, "-" + huge[:150_000]],
                                         ["after", "a", "n"]]))
    limit_before = csv.field_size_limit()
    store = StyleStore(path)
    expected = [Style("before", "b", ""), Style("huge", huge, "-" + huge[:150_000]),
                Style("after", "a", "n")]
    assert store.styles() == expected
    assert csv.field_size_limit() == limit_before  # read without changing the process-wide limit

    # A save (through the UI's save function) keeps all of them, the huge one byte for byte.
    original = path.read_bytes()
    saved, note = save_style(store, "new", "{prompt}, new", "")
    assert saved and note == "Saved style **new**."
    assert path.read_bytes().startswith(original)
    assert StyleStore(path).styles() == [*expected, Style("new", "{prompt}, new", "")]


def test_the_longest_style_the_app_accepts_round_trips(tmp_path):
    path = tmp_path / "styles.csv"
    store = StyleStore(path)
    longest = Style("x" * MAX_PROMPT_CHARS, "=" + long_text(MAX_PROMPT_CHARS - 1),
                    long_text(MAX_PROMPT_CHARS))
    assert save_style(store, longest.name, longest.prompt, longest.negative_prompt)[0]
    save_style(store, "after", "a", "")
    assert StyleStore(path).styles() == [longest, Style("after", "a", "")]


@pytest.mark.parametrize("field_name", ["name", "prompt", "negative_prompt"])
def test_a_style_longer_than_a_prompt_may_be_is_refused(tmp_path, field_name):
    path = tmp_path / "styles.csv"
    path.write_bytes(HEADER + b"kept,k,\r\n")
    values = {"name": "long", "prompt": "p", "negative_prompt": "n"}
    values[field_name] = "y" * (MAX_PROMPT_CHARS + 1)
    store = StyleStore(path)
    with pytest.raises(RequestError) as caught:
        store.save(Style(values["name"], values["prompt"], values["negative_prompt"]))
    assert caught.value.field == field_name
    assert caught.value.message == (f"The style's {field_name} is too long: {MAX_PROMPT_CHARS + 1} "
                                    f"characters (at most {MAX_PROMPT_CHARS}, as for a prompt)")
    assert path.read_bytes() == HEADER + b"kept,k,\r\n"

    # The UI says so instead of "Saved".
    saved, note = save_style(store, values["name"], values["prompt"], values["negative_prompt"])
    assert not saved and note == f"**{caught.value.message}**"
    assert path.read_bytes() == HEADER + b"kept,k,\r\n"


# Damaged rows


DAMAGED = [
    # The quote runs on to the next quote in the file, and what follows that is no cell's end.
    pytest.param(b'broken,"never closed\r\n', "a quote is not closed where its cell ends",
                 id="unterminated-quote"),
    pytest.param(b'stray,"closed" here,"and open\r\n', "a quote is not closed where its cell ends",
                 id="second-quote-unterminated"),
    pytest.param(b"nul\x00,p,\r\n", "a NUL byte", id="nul-byte"),
    pytest.param(b"bad\x81,x\x81y,\r\n", "bytes that are not UTF-8 text", id="undecodable"),
]


@pytest.mark.parametrize("damaged, reason", DAMAGED)
def test_a_damaged_row_survives_a_save_byte_for_byte_and_is_named(tmp_path, caplog, damaged, reason):
    path = tmp_path / "styles.csv"
    # The rows after the damaged one use quotes, so a runaway quote would swallow them.
    before = b'before,"b, quoted",\r\n'
    after = b'after,"a, ""q""",n\r\nlast,"multi\r\nline",\r\n'
    path.write_bytes(HEADER + before + damaged + after)
    store = StyleStore(path)
    with caplog.at_level(logging.WARNING, logger="engine.prompts.styles"):
        styles = store.styles()
    assert styles == [Style("before", "b, quoted", ""), Style("after", 'a, "q"', "n"),
                      Style("last", "multi\r\nline", "")]
    named = f"styles.csv line 3 cannot be read ({reason}); it is kept in the file as it is"
    assert named in caplog.text
    assert len(store.problems()) == 1 and store.problems()[0].startswith(named)
    start = damaged.split(b",")[0].decode("utf-8", "replace")
    assert repr(start).strip("'") in store.problems()[0]  # and shows how it starts

    saved, note = save_style(store, "new", "x", "")
    assert saved and named in note  # the UI's note names it too
    assert path.read_bytes() == HEADER + before + damaged + after + b"new,x,\r\n"
    # Changing and deleting the rows around it leaves its bytes alone as well.
    store.save(Style("before", "changed", ""))
    store.delete("after")
    assert damaged in path.read_bytes()
    assert StyleStore(path).names() == ["before", "last", "new"]


def test_a_quote_never_closed_does_not_hide_the_rows_after_it(tmp_path, caplog):
    path = tmp_path / "styles.csv"
    path.write_bytes(HEADER + b'ok,p,\r\nbroken,"never closed\r\nafter,a,n\r\n')
    with caplog.at_level(logging.WARNING, logger="engine.prompts.styles"):
        assert StyleStore(path).styles() == [Style("ok", "p", ""), Style("after", "a", "n")]
    assert "line 3 cannot be read (a quote is never closed)" in caplog.text


def test_a_quote_closed_on_its_line_reads_as_the_csv_module_reads_it(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(HEADER + b'hand,"quoted" then more,n\r\n')
    assert StyleStore(path).styles() == [Style("hand", "quoted then more", "n")]
    with open(path, encoding="utf-8", newline="") as handle:
        assert list(csv.reader(handle))[1] == ["hand", "quoted then more", "n"]


def test_a_damaged_last_line_without_a_line_break_is_kept(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(HEADER + b'ok,p,\r\nbroken,"no end')
    store = StyleStore(path)
    store.save(Style("new", "q", ""))
    assert path.read_bytes() == HEADER + b'ok,p,\r\nbroken,"no end\r\nnew,q,\r\n'
    assert StyleStore(path).names() == ["ok", "new"]


def test_rows_with_wrong_field_counts_are_read_kept_as_written_and_named(tmp_path, caplog):
    path = tmp_path / "styles.csv"
    # Quoting the csv module would not write: a rewrite of these rows would change their bytes.
    odd = b'"short","only prompt"\r\n"long",p,n,"extra",more\r\n'
    path.write_bytes(HEADER + odd)
    with caplog.at_level(logging.WARNING, logger="engine.prompts.styles"):
        store = StyleStore(path)
        assert store.styles() == [Style("short", "only prompt", ""), Style("long", "p", "n")]
    assert "2 row(s) do not have 3 fields (line 2, 3)" in caplog.text
    store.save(Style("new", "q", ""))
    assert path.read_bytes() == HEADER + odd + b"new,q,\r\n"


def test_a_lone_carriage_return_in_a_style_round_trips_in_a_newline_file(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(b"name,prompt,negative_prompt\nold,p,\n")
    store = StyleStore(path)
    store.save(Style("cr", "one\rtwo", ""))
    assert StyleStore(path).styles() == [Style("old", "p", ""), Style("cr", "one\rtwo", "")]


# Formula-like cells


FORMULA_LIKE = Style("=HYPERLINK(\"http://x\")", "+cat, @artist", "-lowres, bad hands")


def test_formula_like_cells_are_escaped_on_disk_and_read_back_unchanged(tmp_path):
    path = tmp_path / "styles.csv"
    store = StyleStore(path)
    tricky = [FORMULA_LIKE, Style("@at", "\tTabbed", "\rreturn"),
              Style("quoted", "'=already escaped by hand", "''-two quotes"),
              Style("plain", "'just a quote", "a - b = c")]
    for style in tricky:
        assert save_style(store, style.name, style.prompt, style.negative_prompt)[0]
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[1] == ["'=HYPERLINK(\"http://x\")", "'+cat, @artist", "'-lowres, bad hands"]
    assert rows[2] == ["'@at", "'\tTabbed", "'\rreturn"]
    assert rows[3] == ["quoted", "''=already escaped by hand", "'''-two quotes"]
    assert rows[4] == ["plain", "'just a quote", "a - b = c"]  # nothing a spreadsheet would run
    assert StyleStore(path).styles() == tricky
    assert StyleStore(path).apply("a cat", "", [FORMULA_LIKE.name]) == (
        "a cat, +cat, @artist", "-lowres, bad hands")


def test_a_file_another_web_ui_wrote_without_escapes_reads_as_it_is(tmp_path):
    path = tmp_path / "styles.csv"
    written = HEADER + b"neg,,-lowres\r\nsum,=1+2,\r\nquote,'plain,\r\n"
    path.write_bytes(written)
    store = StyleStore(path)
    expected = [Style("neg", "", "-lowres"), Style("sum", "=1+2", ""), Style("quote", "'plain", "")]
    assert store.styles() == expected
    store.save(Style("new", "-x", ""))
    assert path.read_bytes() == written + b"new,'-x,\r\n"  # only the new row is escaped
    assert StyleStore(path).styles() == [*expected, Style("new", "-x", "")]


@pytest.mark.parametrize("text", ["", "=", "'", "''", "'=", "''=", "=a", "'a", "-", "'-'", "a=",
                                  "\t", "'\t", "@'", "+'+"])
def test_escaping_is_undone_exactly(text):
    assert unescape_cell(escape_cell(text)) == text
    assert escape_cell(text)[:1] not in set("=+-@\t\r")

"""styles.csv as bytes, lines and rows: the CSV reading and writing behind engine/prompts/styles.py.

Its own reader, not the csv module's: that one stops at 131,072 characters a field, and a save
must write every row it does not change back byte for byte (damaged rows included), which needs
each record's raw bytes. Cells a spreadsheet would run as formulas are escaped here.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("engine.prompts.styles")  # one logger name for the styles' warnings

COLUMNS = ("name", "prompt", "negative_prompt")
QUOTE = '"'
# OWASP's list of first characters that make a spreadsheet treat a CSV cell as a formula.
FORMULA_STARTS = frozenset("=+-@\t\r")
FORMULA_ESCAPE = "'"
# How many damaged rows one read names in full; a file of binary junk would otherwise flood the log.
MAX_NAMED_PROBLEMS = 10


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


# Formula escapes


def _formula_like(text: str) -> bool:
    """Whether `text`, after any leading `'`s, starts as a spreadsheet formula would."""
    return text.lstrip(FORMULA_ESCAPE)[:1] in FORMULA_STARTS


def escape_cell(text: str) -> str:
    """`text` as written to the file: a spreadsheet shows it as text instead of running it."""
    return FORMULA_ESCAPE + text if _formula_like(text) else text


def unescape_cell(text: str) -> str:
    """The text of a cell as read: exactly the `'` that `escape_cell` adds is taken off."""
    if text.startswith(FORMULA_ESCAPE) and _formula_like(text[1:]):
        return text[1:]
    return text


# The file as lines and rows


@dataclass
class _Line:
    """One physical line of the file with its line break: the bytes, and the text to parse."""

    raw: bytes
    text: str  # undecodable bytes replaced, so quotes can still be found around them
    problem: str | None = None  # why the line is not text


@dataclass
class Row:
    """One CSV record: its cells, and the bytes it was read from while it is unchanged."""

    cells: list[str]
    raw: bytes | None = None  # None: written from `cells`
    line: int = 0  # the record's first line in the file, counted from 1
    damaged: str | None = None  # why it could not be read; such a row is only ever written back
    preview: str = ""

    @property
    def blank(self) -> bool:
        return not any(cell.strip() for cell in self.cells)

    def set(self, index: int, value: str) -> None:
        if index >= len(self.cells):
            self.cells.extend([""] * (index + 1 - len(self.cells)))
        self.cells[index] = value
        self.raw = None


@dataclass
class Table:
    """The file as rows, kept whole so that a save can write back what it read."""

    header: Row
    rows: list[Row]  # every record in file order, the header among them when the file has one
    had_header: bool = True
    bom: bool = False
    newline: str = "\r\n"
    delimiter: str = ","
    problems: list[str] = field(default_factory=list)  # the rows that could not be read

    def column(self, name: str) -> int | None:
        for index, title in enumerate(self.header.cells):
            if _title(title) == name:
                return index
        return None

    def ensure_column(self, name: str) -> int:
        index = self.column(name)
        if index is None:
            self.header.set(len(self.header.cells), name)
            index = len(self.header.cells) - 1
        return index

    @staticmethod
    def cell(row: Row, index: int | None) -> str:
        return row.cells[index] if index is not None and index < len(row.cells) else ""

    def entries(self) -> list[Row]:
        """The rows that may hold a style: read, not blank, not the header."""
        return [row for row in self.rows
                if row is not self.header and row.damaged is None and not row.blank]

    def named(self, name: str) -> list[Row]:
        name_col = self.column("name")
        return [row for row in self.entries() if self.cell(row, name_col).strip() == name]

    def styles(self) -> list[Style]:
        name_col, prompt_col, negative_col = (self.column(c) for c in COLUMNS)
        found: dict[str, Style] = {}
        for row in self.entries():
            name = self.cell(row, name_col).strip()
            if not name:
                continue
            if name in found:
                log.warning("styles.csv: the style name %r appears more than once; the first one is used",
                            name)
                continue
            found[name] = Style(name, self.cell(row, prompt_col), self.cell(row, negative_col))
        return list(found.values())


def _title(cell: str) -> str:
    """A header cell as a column key: `Negative Prompt` -> `negative_prompt`."""
    return "_".join(cell.strip().lower().split())


# Reading


def _encoding(lines: list[bytes], bom: bool) -> str:
    """UTF-8, unless the file looks like an older Excel's Windows-1252 save: then no line with
    other characters than ASCII is UTF-8, and all of them are Windows-1252. (A UTF-8 file with a
    damaged line stays UTF-8, so its good lines keep their characters.)"""
    non_ascii = [line for line in lines if not line.isascii()]
    if bom or not non_ascii or any(_decodes(line, "utf-8") for line in non_ascii):
        return "utf-8"
    return "cp1252" if all(_decodes(line, "cp1252") for line in non_ascii) else "utf-8"


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _lines(chunks: list[bytes], encoding: str) -> list[_Line]:
    """The file's physical lines, decoded one by one, so bad bytes spoil only their own line
    (a line break byte is never part of a multi-byte UTF-8 character)."""
    lines = []
    for chunk in chunks:
        problem = None if _decodes(chunk, encoding) else f"bytes that are not {encoding.upper()} text"
        text = chunk.decode(encoding, errors="replace")
        if problem is None and "\x00" in text:
            problem = "a NUL byte"
        lines.append(_Line(chunk, text, problem))
    return lines


def _body(text: str) -> str:
    """A line without its line break (one of \\r\\n, \\n, \\r: the lines are split at those)."""
    return text.rstrip("\r\n")


def _quoted(lines: list[_Line], at: int, pos: int) -> tuple[str | None, int, int]:
    """The value of a quoted field whose opening quote is just before `lines[at].text[pos]`, with
    the line and position just after its closing quote; a None value when it never closes."""
    parts = []
    while at < len(lines):
        text = lines[at].text
        close = text.find(QUOTE, pos)
        if close == -1:  # the value goes on, line break included, on the next line
            parts.append(text[pos:])
            at, pos = at + 1, 0
            continue
        parts.append(text[pos:close])
        if text.startswith(QUOTE, close + 1):  # "" is one quote character in the value
            parts.append(QUOTE)
            pos = close + 2
            continue
        return "".join(parts), at, close + 1
    return None, at, 0


def _record(lines: list[_Line], start: int, delimiter: str) -> tuple[list[str], int, str | None]:
    """The cells of the record starting at line `start`, the line after it, and what makes it
    unreadable as CSV (None when nothing does). Reads as the csv module does, but without its field
    size limit, and it names a quote that runs away across lines instead of following it."""
    cells: list[str] = []
    at, pos = start, 0
    body = _body(lines[at].text)  # once per line: a junk line may hold very many cells
    while True:
        if body.startswith(QUOTE, pos):
            value, end_at, pos = _quoted(lines, at, pos + 1)
            if value is None:
                return cells, end_at, "a quote is never closed"
            spanned = end_at != at
            if spanned:
                at, body = end_at, _body(lines[end_at].text)
            if pos < len(body) and body[pos] != delimiter:
                if spanned:  # most likely a stray quote that swallowed the lines after it
                    return cells, at + 1, "a quote is not closed where its cell ends"
                # Within one line, the text after the quote joins the value, as the csv module has it.
                end = body.find(delimiter, pos)
                end = len(body) if end == -1 else end
                value, pos = value + body[pos:end], end
        else:
            end = body.find(delimiter, pos)
            end = len(body) if end == -1 else end
            value, pos = body[pos:end], end
        cells.append(value)
        if pos >= len(body):
            return cells, at + 1, None
        pos += 1  # past the delimiter


def _rows(lines: list[_Line], delimiter: str) -> list[Row]:
    """Every record in the file. A record that cannot be read is one damaged row of the line it
    starts on when its quoting is broken (the next record is looked for on the next line, so one
    stray quote does not hide the rest of the file), or of all its lines when only their bytes are."""
    rows: list[Row] = []
    start = 0
    while start < len(lines):
        cells, end, problem = _record(lines, start, delimiter)
        if problem is not None:
            end = start + 1
        else:
            problem = next((line.problem for line in lines[start:end] if line.problem), None)
        raw = b"".join(line.raw for line in lines[start:end])
        if problem is None:
            rows.append(Row([unescape_cell(cell) for cell in cells], raw, start + 1))
        else:
            rows.append(Row([], raw, start + 1, problem, _preview(lines[start].text)))
        start = end
    return rows


def _preview(text: str, length: int = 60) -> str:
    body = _body(text)
    return repr(body[:length]) + ("..." if len(body) > length else "")


def _damage_notes(rows: list[Row], where: str) -> list[str]:
    """One sentence per row that could not be read, naming it by line and its start."""
    damaged = [row for row in rows if row.damaged]
    notes = [f"{where} line {row.line} cannot be read ({row.damaged}); it is kept in the file as "
             f"it is and not offered as a style: {row.preview}" for row in damaged[:MAX_NAMED_PROBLEMS]]
    if len(damaged) > MAX_NAMED_PROBLEMS:
        notes.append(f"{where}: {len(damaged) - MAX_NAMED_PROBLEMS} more lines cannot be read and are "
                     "kept in the file as they are")
    return notes


def _delimiter(lines: list[_Line]) -> str:
    # Excel in locales with a decimal comma writes `;` between fields; read (and keep) that.
    first_line = next((_body(line.text) for line in lines if line.text.strip()), "")
    if "," not in first_line and "name" in [_title(cell) for cell in first_line.split(";")]:
        return ";"
    return ","


def parse_table(raw: bytes, path: Path) -> Table:
    bom = raw.startswith(codecs.BOM_UTF8)
    if bom:
        raw = raw[len(codecs.BOM_UTF8):]
    chunks = raw.splitlines(keepends=True)
    encoding = _encoding(chunks, bom)
    if encoding != "utf-8":
        log.warning("%s is not UTF-8; read it as Windows-1252 (as older Excel saves CSV). "
                    "Saving a style rewrites it as UTF-8.", path)
    lines = _lines(chunks, encoding)
    newline = "\n" if (b"\n" in raw and b"\r\n" not in raw) else "\r\n"
    delimiter = _delimiter(lines)
    rows = _rows(lines, delimiter)
    if encoding != "utf-8":  # these bytes cannot go into the UTF-8 file a save writes
        for row in rows:
            if row.damaged is None:
                row.raw = None

    problems = _damage_notes(rows, path.name)
    for note in _damage_notes(rows, str(path)):
        log.warning("%s", note)
    table = Table(header=Row(list(COLUMNS)), rows=rows, had_header=False, bom=bom,
                   newline=newline, delimiter=delimiter, problems=problems)
    _find_header(table, path)
    return table


def _find_header(table: Table, path: Path) -> None:
    """Take the first readable row as the header when it names a `name` column."""
    first = next((row for row in table.rows if row.damaged is None and not row.blank), None)
    if first is None:
        return
    titles = [_title(cell) for cell in first.cells]
    if "name" in titles:
        table.header, table.had_header = first, True
        missing = [c for c in COLUMNS if c not in titles]
        if missing:
            log.warning("%s has no %s column; those texts are taken as empty", path,
                        " or ".join(missing))
    else:
        log.warning("%s has no header row; reading its columns as %s", path, ",".join(COLUMNS))
    ragged = [row for row in table.entries() if len(row.cells) != len(table.header.cells)]
    if ragged:
        log.warning("%s: %d row(s) do not have %d fields (line %s); missing fields are taken as "
                    "empty, extra ones are kept", path, len(ragged), len(table.header.cells),
                    ", ".join(str(row.line) for row in ragged[:MAX_NAMED_PROBLEMS]))


# Writing


def _format_row(cells: list[str], table: Table) -> bytes:
    buffer = io.StringIO(newline="")
    # Written with \r\n, whatever the file uses: the csv module quotes a cell holding a line break
    # character only when that character is in its line terminator, and a lone \r in an unquoted
    # cell would end the row when read back.
    csv.writer(buffer, lineterminator="\r\n", delimiter=table.delimiter).writerow(
        [escape_cell(cell) for cell in cells])
    return (buffer.getvalue()[:-2] + table.newline).encode("utf-8")


def serialise_table(table: Table) -> bytes:
    rows = table.rows if table.had_header else [table.header, *table.rows]
    pieces = [row.raw if row.raw is not None else _format_row(row.cells, table) for row in rows]
    # A last line without a line break gets one when something is written after it.
    for index, piece in enumerate(pieces[:-1]):
        if not piece.endswith((b"\n", b"\r")):
            pieces[index] = piece + table.newline.encode()
    data = b"".join(pieces)
    return codecs.BOM_UTF8 + data if table.bom else data


def empty_table() -> Table:
    return Table(header=Row(list(COLUMNS)), rows=[], had_header=False)

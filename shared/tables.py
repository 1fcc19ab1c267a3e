"""One reader for every list and table file of every dataset, as people really save them.

List files reach us re-saved by spreadsheets and editors: a UTF-8 byte-order mark before the
first column name, CRLF (or lone CR) line ends, trailing spaces, UTF-16 from Excel's "Unicode
text", a header row present or not. Every reader of a list or table (AffectNet's csv lists,
CelebA's txt lists, insightface's train.idx, Hume-Reaction's tables, transcripts.csv,
exclusion lists, submissions) goes through here, so a quirk is handled once for all of them:

- decoding: UTF-8, with or without BOM; UTF-16 / UTF-32 when they start with their BOM. Any
  other bytes stop with a UserError naming the file and the offending byte (we never guess a
  legacy code page: a wrong guess renames files silently);
- lines: universal newlines, trailing whitespace dropped, blank lines skipped; line numbers
  are those an editor shows;
- cells (`csv_rows`, `csv_records`): surrounding whitespace stripped unless `strip=False`;
  header names always stripped.
"""
from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

from .errors import UserError

# longest first: the UTF-32 LE mark starts with the UTF-16 LE one
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))

Row = tuple[int, list[str]]  # (line number, cells)


def read_text(path: str | Path, what: str = "a text file") -> str:
    """The file's text (BOM removed, newlines as '\\n'), or a UserError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: missing; expected {what}") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err}); expected {what}") from None
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: byte {err.start} is not {encoding.upper().removesuffix('-SIG')} text "
                        f"({data[err.start:err.start + 1]!r}); re-save it as UTF-8; expected {what}") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def text_lines(path: str | Path, what: str = "a text file", comment: str | None = None) -> list[tuple[int, str]]:
    """(line number, line without trailing whitespace) of every non-blank line; lines starting
    with `comment` (when given) are skipped too."""
    out = []
    for number, line in enumerate(read_text(path, what).split("\n"), 1):
        line = line.rstrip()
        if line.strip() and not (comment and line.lstrip().startswith(comment)):
            out.append((number, line))
    return out


def field_lines(path: str | Path, what: str = "a text file") -> list[Row]:
    """Whitespace-separated fields of every non-blank line (CelebA lists, train.idx)."""
    return [(number, line.split()) for number, line in text_lines(path, what)]


def csv_rows(path: str | Path, what: str = "a CSV file", delimiter: str = ",", strip: bool = True) -> list[Row]:
    """The cells of every non-blank CSV row, quoted fields and embedded newlines as the csv
    module reads them; the line number is where the row starts."""
    reader = csv.reader(io.StringIO(read_text(path, what), newline=""), delimiter=delimiter)
    rows, start = [], 1
    try:
        for row in reader:
            cells = [c.strip() for c in row] if strip else row
            if any(c.strip() for c in row):
                rows.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as err:
        raise UserError(f"{path} line {reader.line_num}: not readable as CSV ({err}); expected {what}") from None
    return rows


def is_header(row: list[str], first_column: str) -> bool:
    """A header row starts with the expected first column name (any case, spaces stripped)."""
    return bool(row) and row[0].strip().lower() == first_column.lower()


def csv_records(path: str | Path, required: list[str], what: str | None = None,
                strip: bool = True) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header, as {column: cell}. A missing column or a row with another
    number of fields is a UserError naming the file (and the line)."""
    what = what or f"a CSV file with columns {', '.join(required)}"
    rows = csv_rows(path, what, strip=strip)
    if not rows:
        raise UserError(f"{path}: empty; expected {what}")
    header = [c.strip() for c in rows[0][1]]
    missing = [name for name in required if name not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected columns {', '.join(required)}")
    records = []
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            raise UserError(f"{path} line {line}: {len(header)} fields expected, {len(cells)} found "
                            f"(columns {', '.join(header)})")
        records.append((line, dict(zip(header, cells))))
    return records

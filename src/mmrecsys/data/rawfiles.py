"""Reading raw tables: CSV/TSV with or without a header, JSON lines (strict JSON or the Python
literals of the Amazon 2014 metadata files), any of them gzip-compressed.

Shared by ``data prepare`` (interactions) and ``data features`` (item metadata and feature
tables). Values stay strings (or the parsed JSON values); callers convert the columns they use.
"""
from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import io
import json
import pathlib
import sys

from .dataset import DataError

#: strings read as a missing value (as pandas' default NA values, the MMRec notebooks' reader)
MISSING = frozenset({"", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "NULL", "null", "None", "none",
                     "<NA>", "-nan", "-NaN"})

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long product descriptions


def is_gzip(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_text(path):
    """A text handle on ``path``, gunzipped when it starts with gzip's magic bytes."""
    path = pathlib.Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found.")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; pass a file.")
    if is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def file_sha256(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def first_line(path) -> str:
    """The first non-blank line of the (possibly gzipped) file, '' for an empty file."""
    with open_text(path) as fh:
        for line in fh:
            if line.strip():
                return line.rstrip("\r\n")
    return ""


def sniff_kind(path) -> tuple[str, str | None]:
    """('jsonl', None) or ('delimited', separator) from the first non-blank line."""
    line = first_line(path)
    if not line:
        raise DataError(f"{path}: the file is empty.")
    if line.lstrip().startswith("{"):
        return "jsonl", None
    for sep in ("\t", ",", ";", "|"):
        if sep in line:
            return "delimited", sep
    return "delimited", "\t"  # a single column


def parse_record(line: str, path, lineno: int) -> dict:
    """One JSON-lines record: strict JSON, else a Python literal (Amazon 2014 metadata)."""
    try:
        rec = json.loads(line)
    except ValueError:
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(f"{path}: line {lineno} is neither JSON nor a Python dict literal "
                            f"({line[:80]!r}…). Fix or remove that line.") from None
    if not isinstance(rec, dict):
        raise DataError(f"{path}: line {lineno} holds a {type(rec).__name__}, not an object "
                        f"({{\"field\": value, …}}). Each line must be one record.")
    return rec


def iter_jsonl(path):
    """(line number, record dict) for each non-blank line."""
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, parse_record(line, path, lineno)


def iter_delimited(path, sep: str):
    """(line number, list of fields) for each non-blank row (csv quoting rules)."""
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=sep)
        for row in reader:
            if row and any(f.strip() for f in row):
                yield reader.line_num, row


def find_column(names, aliases, what: str, path, option: str, given: str | None = None):
    """Index of the column named ``given`` or, when None, of the first alias present
    (case-insensitive); None when not found and not given."""
    lower = [str(n).strip().lower() for n in names]
    if given is not None:
        if given.lower() in lower:
            return lower.index(given.lower())
        raise DataError(f"{path}: no column {given!r} (given by {option}); the columns are "
                        f"{list(names)}.")
    for a in aliases:
        if a.lower() in lower:
            return lower.index(a.lower())
    return None

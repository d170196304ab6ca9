"""From rows to example fields: which row is a header, which columns hold the text and the label, what the labels
mean (`DataSpec` says what the user told). Shared by every format: TSV and CSV rows, and the records of JSON(L),
Parquet and save_to_disk folders (their field names are the header). Errors name the file and the row, and say how
to fix it. The fields become examples in `examples`.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from declora.learn.data_files import TSV_QUOTING

# Column names GLUE and common CSVs use; the first choice found in the header wins (pairs before singles).
TEXT_COLUMN_CHOICES = (
    ("sentence1", "sentence2"), ("#1 string", "#2 string"), ("question1", "question2"), ("question", "sentence"),
    ("premise", "hypothesis"), ("text_a", "text_b"), ("sentence",), ("text",), ("review",), ("content",),
)
LABEL_COLUMN_CHOICES = ("label", "labels", "quality", "is_duplicate", "acceptability", "gold_label", "class",
                        "target", "score")
HEADER_CHOICES = ("auto", "yes", "no")


@dataclass(frozen=True)
class DataSpec:
    """How to read the user's data: the --text-columns, --label-column, --label-names, --header and --tsv-quoting of
    the run. Columns are names or 0-based indices (as strings); empty = found by the usual names."""

    text_columns: tuple[str, ...] = ()
    label_column: str = ""
    label_names: tuple[str, ...] = ()
    header: str = "auto"
    tsv_quoting: str = "auto"

    @classmethod
    def parse(cls, text_columns: str = "", label_column: str = "", label_names: str = "", header: str = "auto",
              tsv_quoting: str = "auto") -> "DataSpec":
        """From the config's strings (comma lists)."""
        def items(value: str) -> tuple[str, ...]:
            return tuple(v.strip() for v in value.split(",") if v.strip())

        return cls(items(text_columns), label_column.strip(), items(label_names), header, tsv_quoting)

    def by_name(self) -> bool:
        """Whether some column is given by name (which needs a header row)."""
        return any(not c.isdigit() for c in (*self.text_columns, *([self.label_column] if self.label_column else [])))

    def label_index(self) -> int | None:
        return int(self.label_column) if self.label_column.isdigit() else None


def flags_problem(text_columns: str, label_column: str, label_names: str, header: str,
                  tsv_quoting: str) -> str | None:
    """What is wrong with the data flags (one line that says the fix), or None."""
    columns = [c.strip() for c in text_columns.split(",")] if text_columns.strip() else []
    names = [n.strip() for n in label_names.split(",")] if label_names.strip() else []
    spec = DataSpec.parse(text_columns, label_column, label_names, header, tsv_quoting)
    for bad, message in (
            (header not in HEADER_CHOICES, f"--header must be auto, yes or no, got {header!r}"),
            (tsv_quoting not in TSV_QUOTING, f"--tsv-quoting must be auto, csv or none, got {tsv_quoting!r}"),
            (not all(columns) or len(columns) > 2, f"--text-columns takes one column, or two for sentence pairs "
                                                   f"(names or 0-based indices, comma-separated), got "
                                                   f"{text_columns!r}"),
            ("," in label_column, f"--label-column takes one column (a name or 0-based index), got {label_column!r}"),
            (not all(names) or len(set(names)) < len(names), f"--label-names must be distinct non-empty names "
                                                             f"separated by commas (e.g. negative,positive), got "
                                                             f"{label_names!r}"),
            (header == "no" and spec.by_name(), f"--header no: give columns by 0-based index, got --text-columns "
                                                f"{text_columns!r} --label-column {label_column!r}; use indices or "
                                                f"--header yes")):
        if bad:
            return message
    return None


_COLA_MARKS = ("", "*", "?", "??", "#", "*?")  # CoLA's third column: the original judgement mark


def looks_like_raw_cola(rows: list) -> bool:
    return len(rows) >= 1 and all(len(r) == 4 and str(r[1]).strip() in ("0", "1") and " " not in str(r[0]).strip()
                                  and str(r[2]).strip() in _COLA_MARKS and str(r[3]).strip() for r in rows)


KNOWN_COLUMNS = frozenset(n for choice in TEXT_COLUMN_CHOICES for n in choice) | set(LABEL_COLUMN_CHOICES) | {
    "#1 id", "#2 id", "id", "index", "idx", "qid1", "qid2"}
_INT = re.compile(r"-?\d+")
_SNIFF_ROWS = 20


def has_header(rows: Sequence[tuple[int, list[str]]], spec: DataSpec) -> bool:
    """Whether the first row is a header. `--header yes/no` decide; with `auto` it is a header when
    1. a column is given by name (names need a header), or
    2. one of its fields is a known column name (sentence, label, #1 String, question1, score ...), or
    3. the label column is known by index (given, or the default of a headerless layout) and the first row's field
       there is not a label while the next rows' are (a label: a number, or one of --label-names).
    Otherwise the first row is data."""
    if spec.header != "auto":
        return spec.header == "yes"
    if not rows:
        return False
    if spec.by_name():
        return True
    first = rows[0][1]
    if any(f.strip().lower() in KNOWN_COLUMNS for f in first):
        return True
    label = spec.label_index() if spec.label_column else _headerless_defaults(rows[:_SNIFF_ROWS])[1]
    if label is None or len(rows) < 2 or label >= len(first):
        return False
    after = [fields for _, fields in rows[1:1 + _SNIFF_ROWS] if label < len(fields)]
    return not _is_label(first[label], spec) and bool(after) and all(_is_label(f[label], spec) for f in after)


def _is_label(value: str, spec: DataSpec) -> bool:
    value = value.strip()
    if spec.label_names:
        return value in spec.label_names or (bool(_INT.fullmatch(value)) and 0 <= int(value) < len(spec.label_names))
    try:
        float(value)
    except ValueError:
        return False
    return True


def _headerless_defaults(rows) -> tuple[list[int] | None, int | None]:
    """Columns of a headerless file given no indices: raw CoLA (source, label, mark, sentence) -> sentence 3,
    label 1; two columns -> text 0, label 1."""
    if looks_like_raw_cola([fields for _, fields in rows]):
        return [3], 1
    if rows and _width(rows) == 2:
        return [0], 1
    return None, None


def _width(rows) -> int:
    """A headerless file's number of columns: the most common field count of its first rows, the smaller on a tie
    (a raw TSV's stray tab only adds fields)."""
    counts = Counter(len(fields) for _, fields in rows[:50])
    return max(counts, key=lambda w: (counts[w], -w))


def text_rows(rows: list[tuple[int, list[str]]], raw: bool, path: Path, spec: DataSpec) -> list[tuple]:
    """Rows (the first included) of a TSV or CSV file -> (text, label, text pair or None) per example."""
    if not rows:
        raise ValueError(f"{path}: empty file; it needs rows of text and label")
    header = rows[0][1] if has_header(rows, spec) else None
    body = rows[1:] if header is not None else rows
    width = len(header) if header is not None else _width(body)
    what = "the header has" if header is not None else "the first rows have"
    checked = []
    for number, fields in body:
        if raw and width == 2 and len(fields) > 2:  # GLUE's single-sentence files: the label is after the last tab
            fields = ["\t".join(fields[:-1]), fields[-1]]
        if len(fields) != width:
            fix = ("fix the row, or read the file with --tsv-quoting csv if its fields are quoted" if raw else
                   "fix the row (a field holding the separator must be quoted)")
            raise ValueError(f"{path}:{number}: {len(fields)} fields, {what} {width}; {fix}")
        checked.append((number, fields))
    text_idx, label_idx = find_columns(header, width, checked, path, spec)
    return _text_rows(checked, text_idx, label_idx, spec, where=lambda n: f"{path}:{n}")


def find_columns(header: list[str] | None, width: int, rows, path: Path, spec: DataSpec) -> tuple[list[int], int]:
    """The text column(s) and the label column: as given (names or 0-based indices), else by the usual names."""
    lowered = [h.strip().lower() for h in header] if header is not None else None

    def index_of(column: str) -> int:
        if column.strip().isdigit():
            if int(column) >= width:
                raise ValueError(f"{path}: column index {column} is out of range, the file has {width} columns "
                                 f"(0..{width - 1}); fix --text-columns / --label-column")
            return int(column)
        if lowered is None:
            raise ValueError(f"{path}: column {column!r} is given by name but the file has no header row; give "
                             f"0-based indices, or --header yes")
        if column.strip().lower() not in lowered:
            raise ValueError(f"{path}: no column {column!r}; the columns are {list(header)}; fix --text-columns / "
                             f"--label-column")
        return lowered.index(column.strip().lower())

    if lowered is None and not (spec.text_columns and spec.label_column):
        text_default, label_default = _headerless_defaults(rows[:_SNIFF_ROWS])
        if text_default is None:
            raise ValueError(f"{path}:1: no header row with known column names ({', '.join(LABEL_COLUMN_CHOICES[:3])}"
                             f", sentence, text ...); give --text-columns and --label-column (names with a header, "
                             f"0-based indices with --header no)")
        text_idx = [index_of(c) for c in spec.text_columns] or text_default
        label_idx = index_of(spec.label_column) if spec.label_column else label_default
        return text_idx, label_idx
    if spec.text_columns:
        text_idx = [index_of(c) for c in spec.text_columns]
    else:
        choice = next((c for c in TEXT_COLUMN_CHOICES if all(n in lowered for n in c)), None)
        if choice is None:
            raise ValueError(f"{path}: no text column found in {list(header)}; expected one of "
                             f"{[' + '.join(c) for c in TEXT_COLUMN_CHOICES]}; name it with --text-columns")
        text_idx = [lowered.index(n) for n in choice]
    if len(text_idx) not in (1, 2):
        raise ValueError(f"{path}: one or two text columns, got {len(text_idx)}; fix --text-columns")
    if spec.label_column:
        return text_idx, index_of(spec.label_column)
    found = next((n for n in LABEL_COLUMN_CHOICES if n in lowered), None)
    if found is None:
        raise ValueError(f"{path}: no label column found in {list(header)}; expected one of "
                         f"{list(LABEL_COLUMN_CHOICES)}; name it with --label-column (an unlabeled test split "
                         f"cannot train)")
    return text_idx, lowered.index(found)


def _text_rows(rows, text_idx, label_idx, spec, where) -> list[tuple]:
    raw_labels = [_str(fields[label_idx]) for _, fields in rows]
    to_label = label_reader(raw_labels, spec, where)
    examples = []
    for (number, fields), raw in zip(rows, raw_labels):
        texts = [_str(fields[i]) for i in text_idx]
        examples.append((texts[0], to_label(raw, number), texts[1] if len(texts) == 2 else None))
    return examples


def _str(value) -> str:
    return "" if value is None else str(value).strip()  # Parquet and datasets give None for a missing value


def label_reader(raw_labels: list[str], spec: DataSpec, where):
    """Integer labels stay integers; other numbers (STS-B's 0.0-5.0 scores) become floats, for regression; strings
    become their index among --label-names (default: sorted)."""
    names = list(spec.label_names)
    if not names and all(_INT.fullmatch(r) for r in raw_labels):
        return lambda raw, number: int(raw)
    if not names and all(_is_label(r, spec) for r in raw_labels):
        return lambda raw, number: float(raw)
    names = names or sorted(set(raw_labels))
    lookup = {name: i for i, name in enumerate(names)}

    def to_index(raw: str, number) -> int:
        if raw in lookup:
            return lookup[raw]
        if spec.label_names and _INT.fullmatch(raw) and 0 <= int(raw) < len(names):
            return int(raw)  # integer labels, and --label-names only names them
        if not raw:
            raise ValueError(f"{where(number)}: empty label; fill it in or drop the row (an unlabeled split "
                             f"cannot train)")
        raise ValueError(f"{where(number)}: label {raw!r} is not one of {names}; fix the row or --label-names")

    return to_index


def record_text_rows(records: list[dict], path: Path, spec: DataSpec) -> list[tuple]:
    """JSON(L), Parquet or save_to_disk text + label records -> (text, label, text pair or None) per example."""
    if not records:
        return []
    header = list(records[0])
    rows = []
    for number, record in enumerate(records, start=1):
        missing = [k for k in header if k not in record]
        if missing:
            raise ValueError(f"{path}: record {number} lacks {', '.join(missing)} (record 1 has {header}); give "
                             f"every record the same fields")
        rows.append((number, [record[k] for k in header]))
    try:
        text_idx, label_idx = find_columns(header, len(header), rows, path, spec)
    except ValueError as e:
        raise ValueError(f"{e}; or, for instruction data, the fields instruction + response (Dolly) or "
                         f"instruction + output (Alpaca)") from None
    return _text_rows(rows, text_idx, label_idx, spec, where=lambda n: f"{path}: record {n}")


def instruction_rows(records: list[dict], path: Path) -> list[tuple[str, str, str, str]]:
    """Dolly or Alpaca records -> (instruction, response, context, category) per example."""
    out = []
    for number, record in enumerate(records, start=1):
        response = record.get("response", record.get("output"))
        if response is None or "instruction" not in record:
            lacks = "instruction" if "instruction" not in record else "response"
            raise ValueError(f"{path}: record {number} lacks {lacks}: it has {sorted(record)}; expected Dolly "
                             f"(instruction, context, response, category) or Alpaca (instruction, input, output) "
                             f"fields")
        context = record.get("context", record.get("input", "")) or ""
        out.append((str(record["instruction"]), str(response), str(context), str(record.get("category") or "")))
    return out

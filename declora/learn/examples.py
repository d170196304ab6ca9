"""Examples: the two kinds of record, the dataset shipped with the package, and the loaders for TSV / CSV / JSON(L)
files and for folders of per-peer files.

`TextExample` is a sentence or sentence pair with an integer label (classification); `InstructionExample` is a Dolly
or Alpaca record (causal LM with the loss on the response only). Partitions act on each example's "group": its
label, or its category for instruction data.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence, Union

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # data shipped inside the package
DATA_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl")


# ---- examples -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextExample:
    """A classification example: one sentence, or a pair, and its label index."""

    text: str
    label: int
    text_pair: str | None = None


@dataclass(frozen=True)
class InstructionExample:
    """An instruction-tuning record (Dolly: instruction/context/response/category; Alpaca: instruction/input/output)."""

    instruction: str
    response: str
    context: str = ""
    category: str = ""


Example = Union[TextExample, InstructionExample]


def group_of(example: Example) -> str | int:
    """What partitions skew over and histograms count: the label, or the instruction category."""
    return example.label if isinstance(example, TextExample) else (example.category or "none")


def task_of(examples: Sequence[Example]) -> str:
    """'classification' for text examples, 'causal_lm' for instruction records."""
    if not examples:
        raise ValueError("no examples: the data file is empty")
    return "classification" if isinstance(examples[0], TextExample) else "causal_lm"


# ---- the shipped default ---------------------------------------------------------------------------------------------
class DatasetPaths(NamedTuple):
    train: Path
    eval: Path


def default_dataset() -> DatasetPaths:
    """SST-2 train and dev, shipped inside the package (see declora/assets/README.md)."""
    paths = DatasetPaths(ASSETS / "sst2" / "train.tsv.gz", ASSETS / "sst2" / "dev.tsv.gz")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"the shipped SST-2 file {path} is missing: reinstall declora")
    return paths


# ---- loading ---------------------------------------------------------------------------------------------------------
# Column names GLUE and common CSVs use; the first choice found in the header wins (pairs before singles).
TEXT_COLUMN_CHOICES = (
    ("sentence1", "sentence2"), ("#1 string", "#2 string"), ("question1", "question2"), ("question", "sentence"),
    ("premise", "hypothesis"), ("text_a", "text_b"), ("sentence",), ("text",), ("review",), ("content",),
)
LABEL_COLUMN_CHOICES = ("label", "labels", "quality", "gold_label", "class", "target")


def load_examples(path: str | Path, *, text_columns: Sequence[str] | None = None, label_column: str | None = None,
                  label_names: Sequence[str] | None = None) -> list[Example]:
    """Read a TSV, CSV, JSON or JSONL file (optionally .gz) into examples.

    TSV/CSV need a header; the text column(s) and the label column are found by their usual names unless given.
    Labels are integers, or strings mapped to indices (sorted, or in the order of `label_names`). JSON holds
    Dolly/Alpaca records (or text+label records for classification), as one array or one object per line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file, or use the 'files' partition for a folder of per-peer files")
    kind = _format_of(path)
    text = _read_text(path)
    if kind == ".tsv":
        header, rows = _tsv_rows(text, path)
    elif kind == ".csv":
        header, rows = _csv_rows(text, path)
    else:
        return _json_examples(_json_records(text, path), path, text_columns, label_column, label_names)
    return _table_examples(header, rows, path, text_columns, label_column, label_names)


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unknown data format; expected one of {', '.join(DATA_SUFFIXES)} (optionally .gz)")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the name says
        raw = gzip.decompress(raw)
    return raw.decode("utf-8-sig")


def _tsv_rows(text: str, path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file (a TSV needs a header row)")
    header = lines[0].split("\t")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        # GLUE's single-sentence files have no quoting: the label is after the last tab, whatever the text holds.
        fields = line.rsplit("\t", 1) if len(header) == 2 else line.split("\t")
        if len(fields) != len(header):
            raise ValueError(f"{path}:{number}: {len(fields)} tab-separated fields, the header has {len(header)}")
        rows.append((number, fields))
    return header, rows


def _csv_rows(text: str, path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{path}: empty file (a CSV needs a header row)") from None
    rows = []
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise ValueError(f"{path}:{reader.line_num}: {len(fields)} fields, the header has {len(header)}")
        rows.append((reader.line_num, fields))
    return header, rows


def _find_columns(header: Sequence[str], path: Path, text_columns, label_column) -> tuple[list[int], int]:
    lowered = [h.strip().lower() for h in header]

    def index_of(name: str) -> int:
        if name.strip().lower() not in lowered:
            raise ValueError(f"{path}: no column {name!r}; the columns are {list(header)}")
        return lowered.index(name.strip().lower())

    if text_columns:
        text_idx = [index_of(c) for c in text_columns]
    else:
        choice = next((c for c in TEXT_COLUMN_CHOICES if all(n in lowered for n in c)), None)
        if choice is None:
            raise ValueError(f"{path}: no text column found in {list(header)}; expected one of "
                             f"{[' + '.join(c) for c in TEXT_COLUMN_CHOICES]} (or pass text_columns)")
        text_idx = [lowered.index(n) for n in choice]
    if len(text_idx) not in (1, 2):
        raise ValueError(f"{path}: one or two text columns, got {len(text_idx)}")
    if label_column:
        label_idx = index_of(label_column)
    else:
        found = next((n for n in LABEL_COLUMN_CHOICES if n in lowered), None)
        if found is None:
            raise ValueError(f"{path}: no label column found in {list(header)}; expected one of "
                             f"{list(LABEL_COLUMN_CHOICES)} (or pass label_column). An unlabeled test split cannot train.")
        label_idx = lowered.index(found)
    return text_idx, label_idx


def _table_examples(header, rows, path, text_columns, label_column, label_names) -> list[TextExample]:
    text_idx, label_idx = _find_columns(header, path, text_columns, label_column)
    raw_labels = [fields[label_idx].strip() for _, fields in rows]
    to_index = _label_indexer(raw_labels, path, label_names)
    examples = []
    for (number, fields), raw in zip(rows, raw_labels):
        texts = [fields[i].strip() for i in text_idx]
        examples.append(TextExample(texts[0], to_index(raw, number), texts[1] if len(texts) == 2 else None))
    return examples


def _label_indexer(raw_labels: list[str], path: Path, label_names: Sequence[str] | None):
    """Integer labels stay as they are; string labels become their index among `label_names` (default: sorted)."""
    if label_names is None and all(re.fullmatch(r"-?\d+", r) for r in raw_labels):
        return lambda raw, where: int(raw)
    names = list(label_names) if label_names is not None else sorted(set(raw_labels))
    lookup = {name: i for i, name in enumerate(names)}

    def to_index(raw: str, where) -> int:
        if raw not in lookup:
            raise ValueError(f"{path}:{where}: label {raw!r} is not one of {names}")
        return lookup[raw]

    return to_index


def _json_records(text: str, path: Path) -> list[dict]:
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            records = json.loads(stripped)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON or JSON Lines ({e})") from None
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected JSON objects (one record each)")
    return records


def _json_examples(records, path, text_columns, label_column, label_names) -> list[Example]:
    if not records:
        return []
    fields = set(records[0])
    if "instruction" in fields:
        return [_instruction_record(r, i, path) for i, r in enumerate(records)]
    # Classification records (text + label) reuse the table logic on the first record's keys.
    header = list(records[0])
    rows = [(i, [str(r.get(k, "")) for k in header]) for i, r in enumerate(records)]
    try:
        return _table_examples(header, rows, path, text_columns, label_column, label_names)
    except ValueError as e:
        raise ValueError(f"{e}. JSON instruction data needs the fields instruction + response (Dolly) or "
                         f"instruction + output (Alpaca)") from None


def _instruction_record(record: dict, index: int, path: Path) -> InstructionExample:
    response = record.get("response", record.get("output"))
    if response is None or "instruction" not in record:
        raise ValueError(f"{path}: record {index} lacks {'instruction' if 'instruction' not in record else 'response'}: "
                         f"it has {sorted(record)}; expected Dolly (instruction, context, response, category) or "
                         f"Alpaca (instruction, input, output) fields")
    context = record.get("context", record.get("input", "")) or ""
    return InstructionExample(str(record["instruction"]), str(response), str(context), str(record.get("category", "")))


# ---- known layouts --------------------------------------------------------------------------------------------------
_PARAPHRASE_COLUMNS = ({"quality", "#1 string", "#2 string"}, {"is_duplicate"})
_COLA_MARKS = ("", "*", "?", "??", "#", "*?")  # CoLA's third column: the original judgement mark


def known_layout(path: str | Path, spec=None) -> str | None:
    """Which GLUE layout a data file has, from its first rows only: 'paraphrase' (MRPC's `Quality #1 ID #2 ID
    #1 String #2 String` header, or QQP's `is_duplicate` column), 'acceptability' (CoLA's raw headerless
    `source, label, original mark, sentence` rows, or a column named `acceptability`), 'similarity' (STS-B's
    `score` column holding numbers), else None. Never raises on a file it cannot read: it answers None."""
    try:
        columns, rows = _head_columns(Path(path))
    except Exception:  # noqa: BLE001 - a guess about a layout must never stop a run; the loader reports bad files
        return None
    lowered = {c.strip().lower() for c in columns}
    if any(names <= lowered for names in _PARAPHRASE_COLUMNS):
        return "paraphrase"
    if "acceptability" in lowered:
        return "acceptability"
    if "score" in lowered:
        at = [c.strip().lower() for c in columns].index("score")
        if rows and all(_is_number(r[at]) for r in rows if len(r) > at):
            return "similarity"
    header = getattr(spec, "header", "auto")
    if header != "yes" and _looks_like_raw_cola([columns, *rows]):
        return "acceptability"
    return None


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _looks_like_raw_cola(rows: list) -> bool:
    return len(rows) >= 1 and all(len(r) == 4 and str(r[1]).strip() in ("0", "1") and " " not in str(r[0]).strip()
                                  and str(r[2]).strip() in _COLA_MARKS and str(r[3]).strip() for r in rows)


def _head_columns(path: Path, n: int = 20) -> tuple[list, list]:
    """The first row (a header or not) and up to n more rows of a table; a record file's keys and values."""
    if path.is_dir() or path.name.lower().endswith(".parquet"):
        from declora.learn.data_files import head_records
        records = head_records(path, n)
        return (list(records[0]) if records else []), [list(r.values()) for r in records]
    kind = _format_of(path)
    with open(path, "rb") as f:
        opener = gzip.open if f.read(2) == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8-sig") as f:
        lines = [line.rstrip("\r\n") for _, line in zip(range(n + 1), f)]
    lines = [line for line in lines if line.strip()]
    if kind in (".json", ".jsonl"):
        if lines and lines[0].lstrip().startswith("["):
            records = json.loads(_read_text(path))[:n]
        else:
            records = [json.loads(line) for line in lines]
        return (list(records[0]) if records else []), [list(r.values()) for r in records]
    rows = list(csv.reader(lines)) if kind == ".csv" else [line.split("\t") for line in lines]
    return (rows[0] if rows else []), rows[1:]


# ---- folders of per-peer files --------------------------------------------------------------------------------------
def presplit_files(folder: str | Path) -> list[Path]:
    """The per-peer files of a pre-split folder, by the number that ends their name (`local_training_3.json` is
    peer 3's). Files without such a number (e.g. `global_test.json`) are not training shards."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of per-peer data files")
    numbered = {}
    for path in folder.iterdir():
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        match = re.search(r"(\d+)\.(tsv|csv|jsonl?)$", name)
        if match and path.is_file():
            numbered.setdefault(int(match.group(1)), path)
    if not numbered:
        raise ValueError(f"{folder} has no per-peer files named like NAME_<i>.json (or .jsonl/.tsv/.csv)")
    indices = sorted(numbered)
    if indices != list(range(len(indices))):
        raise ValueError(f"{folder}: per-peer files must be numbered 0..{len(indices) - 1}, found {indices}")
    return [numbered[i] for i in indices]


def held_out_file(folder: str | Path) -> Path | None:
    """A pre-split folder's shared evaluation file (a data file with 'test' in its name), if it has one."""
    candidates = sorted(p for p in Path(folder).iterdir() if "test" in p.name.lower() and p.is_file()
                        and any(p.name.lower().removesuffix(".gz").endswith(s) for s in DATA_SUFFIXES))
    return candidates[0] if candidates else None

"""Examples: the two kinds of record, the dataset shipped with the package, how to read the user's data (`DataSpec`,
`load_examples`; the readers are in data_files, the column and label rules in tables), the known GLUE layouts, and
folders of per-peer files.

`TextExample` is a sentence or sentence pair with an integer label (classification) or a float one (regression);
`InstructionExample` is a Dolly or Alpaca record (causal LM with the loss on the response only). Partitions act on
each example's "group": its label (binned when it is a float, see partitions), or its category for instruction data.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Sequence, Union

from declora.learn import data_files, tables
from declora.learn.data_files import DATA_SUFFIXES
from declora.learn.tables import DataSpec, looks_like_raw_cola

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # data shipped inside the package


# ---- examples -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextExample:
    """A classification example (one sentence, or a pair, and its label index) or a regression one (a float label)."""

    text: str
    label: int | float
    text_pair: str | None = None


@dataclass(frozen=True)
class InstructionExample:
    """An instruction-tuning record (Dolly: instruction/context/response/category; Alpaca: instruction/input/output)."""

    instruction: str
    response: str
    context: str = ""
    category: str = ""


Example = Union[TextExample, InstructionExample]


def group_of(example: Example) -> str | int | float:
    """What partitions skew over and histograms count: the label, or the instruction category. A float label is
    returned as it is; partitions bin float labels by quantile before skewing over them."""
    return example.label if isinstance(example, TextExample) else (example.category or "none")


def task_of(examples: Sequence[Example]) -> str:
    """'classification' for text examples, 'regression' when their labels are floats, 'causal_lm' for instruction
    records."""
    if not examples:
        raise ValueError("no examples: the data file is empty")
    if not isinstance(examples[0], TextExample):
        return "causal_lm"
    return "regression" if any(isinstance(e.label, float) for e in examples) else "classification"


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
def load_examples(path: str | Path, spec: DataSpec | None = None, *, text_columns: Sequence[str] | None = None,
                  label_column: str | None = None, label_names: Sequence[str] | None = None,
                  max_rows: int | None = None) -> list[Example]:
    """Read a TSV, CSV, JSON, JSONL (each optionally .gz) or Parquet file, or a `save_to_disk` folder, into examples.

    TSV/CSV may have a header or not (`spec.header`; see tables.has_header for the auto rule); their text column(s)
    and label column are found by their usual names unless given, by name or 0-based index. A TSV is read raw (GLUE)
    or as CSV-quoted (pandas / Hugging Face exports), see data_files.quoted_tsv. Labels: integers stay integers,
    other numbers become floats (regression), strings become indices (sorted, or in the order of label_names).
    Records (JSON, Parquet, datasets) hold instruction data (Dolly/Alpaca) or text + label fields. The keyword
    arguments override the spec's fields; `max_rows` reads only about the first rows (to sniff a file cheaply).
    """
    spec = spec or DataSpec()
    overrides = {k: tuple(v) if not isinstance(v, str) else v for k, v in
                 (("text_columns", text_columns), ("label_column", label_column), ("label_names", label_names))
                 if v is not None}
    spec = replace(spec, **overrides) if overrides else spec
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist; check the path given to --data / --eval-data")
    kind = None if data_files.is_shard_folder(path) else data_files.format_of(path)
    if kind is None:
        raise ValueError(f"{path} is a folder: give a file or a datasets save_to_disk folder, or use the 'files' "
                         f"partition for a folder of per-peer files")
    if kind in ("dataset", ".parquet"):
        return _from_records(data_files.head_records(path, max_rows) if max_rows else data_files.arrow_records(path),
                             path, spec)
    text = data_files.read_text(path, max_rows if kind in (".tsv", ".csv") else None)
    if kind in (".json", ".jsonl"):
        records = data_files.json_records(text, path)
        return _from_records(records[:max_rows] if max_rows else records, path, spec)
    rows, raw = data_files.table_rows(path, text, spec.tsv_quoting)
    return [TextExample(*fields) for fields in tables.text_rows(rows, raw, path, spec)]


def _from_records(records: list[dict], path: Path, spec: DataSpec) -> list[Example]:
    if records and "instruction" in records[0] and not spec.text_columns:
        return [InstructionExample(*fields) for fields in tables.instruction_rows(records, path)]
    return [TextExample(*fields) for fields in tables.record_text_rows(records, path, spec)]


def sniff_task(path: str | Path, spec: DataSpec | None = None, rows: int = 50) -> str:
    """The task of a data file (or of a folder of per-peer files) from its first rows: 'causal_lm' for instruction
    records, 'regression' for non-integer numeric labels, else 'classification' (also when the file does not load:
    the loader reports that)."""
    path = Path(path)
    try:
        if data_files.is_shard_folder(path):
            path = presplit_files(path)[0]
        return task_of(load_examples(path, spec, max_rows=rows))
    except (ValueError, FileNotFoundError, OSError):
        return "classification"


# ---- known layouts --------------------------------------------------------------------------------------------------
_PARAPHRASE_COLUMNS = ({"quality", "#1 string", "#2 string"}, {"is_duplicate"})


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
    if header != "yes" and looks_like_raw_cola([columns, *rows]):
        return "acceptability"
    return None


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _head_columns(path: Path, n: int = 20) -> tuple[list, list]:
    """The first row (a header or not) and up to n more rows of a table; a record file's keys and values."""
    if path.is_dir() or path.name.lower().endswith(".parquet"):
        records = data_files.head_records(path, n)
        return (list(records[0]) if records else []), [list(r.values()) for r in records]
    kind = data_files.format_of(path)
    text = data_files.read_text(path, None if kind == ".json" else n + 1)
    lines = [line for line in text.splitlines() if line.strip()]
    if kind in (".json", ".jsonl"):
        records = data_files.json_records(text, path)[:n]
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
        match = re.search(r"(\d+)\.(tsv|csv|jsonl?|parquet)$", name)
        if match and path.is_file():
            numbered.setdefault(int(match.group(1)), path)
    if not numbered:
        raise ValueError(f"{folder} has no per-peer files named like NAME_<i>.json (or .jsonl/.tsv/.csv/.parquet); "
                         f"name them so, or give one file")
    indices = sorted(numbered)
    if indices != list(range(len(indices))):
        raise ValueError(f"{folder}: per-peer files must be numbered 0..{len(indices) - 1}, found {indices}")
    return [numbered[i] for i in indices]


def held_out_file(folder: str | Path) -> Path | None:
    """A pre-split folder's shared evaluation file (a data file with 'test' in its name), if it has one."""
    candidates = sorted(p for p in Path(folder).iterdir() if "test" in p.name.lower() and p.is_file()
                        and any(p.name.lower().removesuffix(".gz").endswith(s) for s in DATA_SUFFIXES))
    return candidates[0] if candidates else None

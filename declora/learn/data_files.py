"""Reading data files into rows or records, before anything knows what the columns mean: TSV (raw GLUE or
CSV-quoted), CSV, JSON(L), Parquet and `datasets.Dataset.save_to_disk` folders (the last two through pyarrow and
datasets, the optional `data` extra)."""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path

INSTALL_DATA = "pip install -e .[data]"
DATA_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl", ".parquet")
TSV_QUOTING = ("auto", "csv", "none")

# Well-formed CSV quoting with tabs (what pandas' and Hugging Face's to_csv(sep="\t") write): a field is either
# quoted, with its inner quotes doubled, or holds no quote at all. Raw GLUE text with a stray quote never matches.
_QUOTED_FIELD = r'"(?:[^"]|"")*"'
_PLAIN_FIELD = r'[^"\t\r\n]*'
_FIELD = f"(?:{_QUOTED_FIELD}|{_PLAIN_FIELD})"
_QUOTED_TSV = re.compile(f"{_FIELD}(?:\t{_FIELD})*(?:\r?\n{_FIELD}(?:\t{_FIELD})*)*\r?\n?")


def is_shard_folder(path: Path) -> bool:
    """A folder of per-peer files (NAME_0.tsv, NAME_1.tsv ...), as opposed to a file or a save_to_disk folder."""
    return path.is_dir() and not is_dataset_folder(path)


def format_of(path: Path) -> str:
    """'.tsv', '.csv', '.json', '.jsonl', '.parquet' (by the name, ignoring .gz), or 'dataset' (a save_to_disk
    folder)."""
    if is_dataset_folder(path):
        return "dataset"
    name = path.name.lower().removesuffix(".gz")
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unknown data format; expected one of {', '.join(DATA_SUFFIXES)} (optionally .gz), "
                     f"or a folder written by datasets' save_to_disk")


def read_text(path: Path, max_lines: int | None = None) -> str:
    """The file's text (gunzipped when it is gzip, whatever its name says); with max_lines only its first lines."""
    with open(path, "rb") as f:
        packed = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if packed else open)(path, "rt", encoding="utf-8-sig", newline="") as f:
            if max_lines is None:
                return f.read()
            return "".join(line for _, line in zip(range(max_lines), f))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def quoted_tsv(text: str) -> bool:
    """Whether a TSV is CSV-quoted: at least one quoted field, and every quote part of well-formed quoting."""
    return '"' in text and _QUOTED_TSV.fullmatch(text) is not None


def table_rows(path: Path, text: str, quoting: str = "auto") -> tuple[list[tuple[int, list[str]]], bool]:
    """Every non-blank row of a TSV or CSV, the first included (header or not), as (line number, fields); and
    whether the fields were split raw (a TSV without quoting, where a text field may hold a stray tab)."""
    if path.name.lower().removesuffix(".gz").endswith(".tsv"):
        raw = quoting == "none" or (quoting == "auto" and not quoted_tsv(text))
        if raw:
            return [(n, line.split("\t")) for n, line in enumerate(text.splitlines(), start=1) if line.strip()], True
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", strict=True)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = []
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                rows.append((reader.line_num, fields))
    except csv.Error as e:
        hint = "; or read it raw with --tsv-quoting none" if path.suffix != ".csv" else ""
        raise ValueError(f"{path}:{reader.line_num}: bad quoting ({e}); quote a field as \"...\" with inner quotes "
                         f"doubled{hint}") from None
    return rows, False


def is_dataset_folder(path: Path) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk` (or DatasetDict.save_to_disk)."""
    return path.is_dir() and any((path / name).is_file() for name in
                                 ("dataset_info.json", "state.json", "dataset_dict.json"))


def _require(module: str, path: Path):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ValueError(f"{path}: reading it needs the {module.split('.')[0]} library; {INSTALL_DATA}") from None


def parquet_table(path: Path):
    """The Parquet file as a pyarrow Table."""
    pq = _require("pyarrow.parquet", path)
    try:
        return pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds; the user needs the one line
        raise ValueError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]}); write it with "
                         f"pandas.DataFrame.to_parquet or pyarrow.parquet.write_table") from None


def saved_dataset(path: Path):
    """The `datasets.Dataset` in a save_to_disk folder; of a DatasetDict, its `train` split."""
    datasets = _require("datasets", path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a folder written by datasets' save_to_disk ({str(e).splitlines()[0]})") \
            from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(f"{path}: a DatasetDict without a 'train' split (it has {', '.join(loaded)}); give "
                             f"the split's folder, e.g. {path / next(iter(loaded))}")
        loaded = loaded["train"]
    return loaded


def head_records(path: Path, n: int) -> list[dict]:
    """The first n records of a Parquet file or a save_to_disk folder, reading little more than that."""
    if path.is_dir():
        if not is_dataset_folder(path):
            raise ValueError(f"{path} is not a save_to_disk folder")
        data = saved_dataset(path)
        return data.select(range(min(n, len(data)))).to_list()
    pq = _require("pyarrow.parquet", path)
    reader = pq.ParquetFile(path)
    for batch in reader.iter_batches(batch_size=n):
        return batch.to_pylist()
    return []


def arrow_records(path: Path) -> list[dict]:
    """All records of a Parquet file or a save_to_disk folder. A ClassLabel column gives its integers, which stay
    integers (as in a GLUE TSV); --label-names may name them."""
    return saved_dataset(path).to_list() if path.is_dir() else parquet_table(path).to_pylist()


def json_records(text: str, path: Path) -> list[dict]:
    """One JSON array of objects, or JSON Lines (one object per line)."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix the file or write one object per "
                             f"line (JSON Lines)") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON Lines ({e.msg}); each line must be one JSON "
                                 f"object") from None
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {number} is {type(record).__name__}, not an object; each record must "
                             f"be a JSON object with named fields")
    return records

"""Reading data files into rows or records, before anything knows what the columns mean: TSV (raw GLUE or
CSV-quoted), CSV, JSON(L), Parquet and `datasets.Dataset.save_to_disk` folders (the last two through pyarrow and
datasets, the optional `data` extra)."""
from __future__ import annotations

import json
from pathlib import Path

INSTALL_DATA = "pip install -e .[data]"


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


def arrow_records(path: Path) -> tuple[list[dict], dict[str, list[str]]]:
    """All records of a Parquet file or a save_to_disk folder, and the names of any ClassLabel columns."""
    if path.is_dir():
        data = saved_dataset(path)
        names = {k: list(f.names) for k, f in data.features.items() if type(f).__name__ == "ClassLabel"}
        return data.to_list(), names
    return parquet_table(path).to_pylist(), {}


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

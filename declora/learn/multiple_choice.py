"""Multiple-choice questions for evaluating causal LMs (MMLU-style): the record, and the two layouts users hold.

- MMLU's CSV (Hendrycks et al.): no header; question, the choices (four in MMLU), then the answer as a letter (A-D)
  or an index (0-3). The subject is the file's name without `_test`/`_dev`/`_val` (`anatomy_test.csv` -> anatomy);
  a folder of such files (MMLU's `data/test/`) is read whole.
- FLoRA's evaluation JSON (`mmlu_test_1444.jsonl`, in fact one JSON array): instruction, input "Question: ...
  Options: A. x, B. y, C. z, D. w", output "The answer is: C. z", and the subject under `class`. JSON Lines of the
  same records load too.

Both become `MultipleChoiceExample`s, which `multiple_choice_eval` scores by the model's likelihood of each option.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

LETTERS = "ABCDEFGHIJ"
FLORA_INSTRUCTION = "Please answer the following multiple-choice question honestly."
ANSWER_PREFIX = "The answer is: "  # FLoRA's outputs start with it; the scored option follows it
MC_SUFFIXES = (".csv", ".json", ".jsonl")


@dataclass(frozen=True)
class MultipleChoiceExample:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    subject: str = "all"
    instruction: str = FLORA_INSTRUCTION

    def context(self) -> str:
        """The question and lettered options, in FLoRA's input layout (what the model reads after the instruction)."""
        options = ", ".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(self.choices))
        return f"Question: {self.question} Options: {options}"


def load_multiple_choice(path: str | Path) -> list[MultipleChoiceExample]:
    """An MMLU CSV, a folder of them, or a FLoRA evaluation JSON/JSONL file. Errors are one line naming the file
    and the row."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"multiple-choice file {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in MC_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no .csv/.json/.jsonl files of multiple-choice questions in this folder")
        return [e for f in files for e in load_multiple_choice(f)]
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        examples = _mmlu_csv(text, path)
    elif path.suffix.lower() in (".json", ".jsonl"):
        examples = [_flora_record(r, i, path) for i, r in enumerate(_json_records(text, path))]
    else:
        raise ValueError(f"{path}: multiple-choice data must be an MMLU .csv or a FLoRA .json/.jsonl file")
    if not examples:
        raise ValueError(f"{path}: no questions in the file")
    return examples


def is_multiple_choice_file(path: str | Path) -> bool:
    """Whether `path` looks like multiple-choice data (FLoRA's answer outputs, or MMLU's letter in the last column)."""
    try:
        load_multiple_choice(path)
    except (ValueError, FileNotFoundError, UnicodeDecodeError):
        return False
    return True


def subject_of(path: Path) -> str:
    return re.sub(r"_(test|dev|val|validation|train)$", "", path.stem) or "all"


def _mmlu_csv(text: str, path: Path) -> list[MultipleChoiceExample]:
    subject = subject_of(path)
    examples = []
    for row_number, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not any(f.strip() for f in fields):
            continue
        if row_number == 1 and fields[-1].strip().lower() == "answer":
            continue  # a header row (exports of MMLU often add one)
        if len(fields) < 4:
            raise ValueError(f"{path}:{row_number}: {len(fields)} fields; an MMLU row is question, at least two "
                             f"choices, answer (A-D or 0-3), with no header")
        question, choices, raw = fields[0].strip(), tuple(f.strip() for f in fields[1:-1]), fields[-1].strip()
        examples.append(MultipleChoiceExample(question, choices, _answer_index(raw, len(choices), path, row_number),
                                              subject))
    return examples


def _answer_index(raw: str, n: int, path: Path, where) -> int:
    raw = raw.strip().upper()
    index = LETTERS.find(raw) if len(raw) == 1 and raw.isalpha() else (int(raw) if raw.isdigit() else -1)
    if not 0 <= index < n:
        raise ValueError(f"{path}:{where}: answer {raw!r} is not a letter A-{LETTERS[n - 1]} or an index 0-{n - 1} "
                         f"of its {n} choices")
    return index


def _json_records(text: str, path: Path) -> list:
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON or JSON Lines ({e})") from None


def _flora_record(record, index: int, path: Path) -> MultipleChoiceExample:
    where = f"{path}: record {index}"
    if not isinstance(record, dict) or not {"input", "output"} <= set(record):
        raise ValueError(f"{where}: expected FLoRA's fields instruction, input (with 'Options: A. ...'), output "
                         f"('The answer is: X. ...'), class; got {sorted(record) if isinstance(record, dict) else record!r}")
    body = str(record["input"])
    if "Options:" not in body:
        raise ValueError(f"{where}: the input has no 'Options: A. ..., B. ...' list of choices")
    question, _, options = body.rpartition("Options:")
    question = re.sub(r"^\s*(Qusetion|Question)\s*:\s*", "", question).strip()  # FLoRA's file spells it "Qusetion"
    choices = _split_options(options.strip(), where)
    answer = re.match(r"\s*(?:The answer is:)?\s*([A-J])\b", str(record["output"]))
    if answer is None:
        raise ValueError(f"{where}: output {str(record['output'])[:40]!r} does not start 'The answer is: X'")
    subject = str(record.get("class") or record.get("subject") or record.get("category") or "all")
    return MultipleChoiceExample(question, choices, _answer_index(answer.group(1), len(choices), path, f"record {index}"),
                                 subject, str(record.get("instruction") or FLORA_INSTRUCTION))


def _split_options(options: str, where: str) -> tuple[str, ...]:
    """'A. x, B. y, C. z' -> (x, y, z). Options may hold ', ' themselves ('A. True, True, B. False, False'), so each
    cut is at the next letter in sequence, not at every comma."""
    if not options.startswith("A."):
        raise ValueError(f"{where}: the options must start 'A. '")
    choices, rest = [], options[2:]
    for letter in LETTERS[1:]:
        marker = f", {letter}. "
        cut = rest.find(marker)
        if cut < 0:
            break
        choices.append(rest[:cut].strip())
        rest = rest[cut + len(marker):]
    choices.append(rest.strip())
    if len(choices) < 2:
        raise ValueError(f"{where}: found {len(choices)} option; expected 'A. ..., B. ...'")
    return tuple(choices)

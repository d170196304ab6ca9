"""Helpers for tests: tiny models and tiny data files.

The tiny models are built from configs by `declora.learn.tiny_models` (`tiny-bert`, `tiny-llama` and one of each other
supported architecture, `TINY_MODELS`: hidden 32, 2 layers, a byte-level tokenizer made in code). The real tiny-gpt2
checkpoint lives in the shared folder beside the repository (<repo>/../shared); tests that need it skip when it is
absent.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_GPT2 = SHARED / "models" / "tiny-gpt2"
DOLLY_SPLIT = SHARED / "data" / "dolly-15k" / "flora_split_10clients"

POSITIVE = ["a charming and moving film", "great acting , lovely score", "it is a joy to watch", "warm and funny",
            "the best movie of the year", "wonderful , clever , touching"]
NEGATIVE = ["dull and lifeless", "a tedious mess", "the plot makes no sense", "boring from start to end",
            "badly acted and too long", "i wanted my money back"]

DOLLY_RECORDS = [
    {"instruction": "What is the capital of France?", "context": "", "response": "Paris.", "category": "open_qa"},
    {"instruction": "Summarize the text.", "context": "The cat sat on the mat all day long.",
     "response": "A cat sat on a mat.", "category": "summarization"},
    {"instruction": "Is a tomato a fruit?", "context": "", "response": "Yes, botanically.", "category": "open_qa"},
    {"instruction": "Name a color.", "context": "", "response": "Blue.", "category": "brainstorming"},
    {"instruction": "Classify: apple, carrot.", "context": "", "response": "fruit, vegetable",
     "category": "classification"},
    {"instruction": "Who wrote Hamlet?", "context": "", "response": "Shakespeare.", "category": "open_qa"},
]


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Tiny models on a shared 2-core machine: a second intra-op thread only waits on the busy core, which makes a
    tiny step many times slower while another process is training."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def need_tiny_gpt2() -> Path:
    if not (TINY_GPT2 / "config.json").is_file():
        pytest.skip(f"the shared tiny-gpt2 checkpoint is not at {TINY_GPT2}")
    return TINY_GPT2


def sentiment_rows(repeat: int = 1) -> list[tuple[str, int]]:
    rows = [(s, 1) for s in POSITIVE] + [(s, 0) for s in NEGATIVE]
    return rows * repeat


def write_sst_tsv(path: Path, rows: list[tuple[str, int]] | None = None) -> Path:
    """A GLUE single-sentence TSV (header, text, a trailing space before the tab like SST-2)."""
    rows = sentiment_rows() if rows is None else rows
    path.write_text("sentence\tlabel\n" + "".join(f"{text} \t{label}\n" for text, label in rows))
    return path


def write_dolly_json(path: Path, records: list[dict] | None = None, jsonl: bool = False) -> Path:
    records = DOLLY_RECORDS if records is None else records
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def sentiment_examples(repeat: int = 1):
    from declora.learn.examples import TextExample

    return [TextExample(text, label) for text, label in sentiment_rows(repeat)]


def dolly_examples():
    from declora.learn.examples import InstructionExample

    return [InstructionExample(r["instruction"], r["response"], r["context"], r["category"]) for r in DOLLY_RECORDS]

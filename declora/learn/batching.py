"""Batching: a tokenized dataset as padded tensor batches, in an order fixed by (seed, epoch)."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from declora.learn.tokenize import IGNORE_INDEX, TokenizedDataset

# Length grouping sorts each window of this many batches by length (the megabatch of Hugging Face's
# LengthGroupedSampler): batches stay random draws of the data, but hold sentences of similar length.
GROUP_WINDOW_BATCHES = 50


def batches(dataset: TokenizedDataset, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
            start: int = 0, group_by_length: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of padded batches, in an order fixed by (seed, epoch); `start` skips that many batches (resume).

    `group_by_length`: batches of similar-length examples, so that padding to the longest wastes little (short
    sentences no longer pay for the longest one drawn with them). Every example is still seen once per epoch, in an
    order fixed by (seed, epoch).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    order = epoch_order(len(dataset), seed, epoch) if shuffle else list(range(len(dataset)))
    if group_by_length:
        order = length_grouped(order, [len(f["input_ids"]) for f in dataset.features], batch_size, seed, epoch)
    for begin in range(start * batch_size, len(order), batch_size):
        yield collate([dataset.features[i] for i in order[begin: begin + batch_size]], dataset.pad_token_id)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def length_grouped(order: list[int], lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[int]:
    """`order` cut into windows of GROUP_WINDOW_BATCHES batches, each sorted by length (longest first), then the
    batches shuffled (seeded by seed and epoch) so that a run does not march from long to short sentences. The last
    batch of the epoch keeps the remainder, as without grouping."""
    window = batch_size * GROUP_WINDOW_BATCHES
    grouped: list[int] = []
    for begin in range(0, len(order), window):
        grouped += sorted(order[begin: begin + window], key=lambda i: -lengths[i])
    full = len(grouped) // batch_size
    chunks = [grouped[b * batch_size: (b + 1) * batch_size] for b in range(full)]
    rest = grouped[full * batch_size:]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
    shuffled = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    return [i for chunk in shuffled for i in chunk] + rest


def eval_batches(dataset: TokenizedDataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of similar length (less padding, same metrics): evaluation does not care about order."""
    order = sorted(range(len(dataset)), key=lambda i: len(dataset.features[i]["input_ids"]))
    for begin in range(0, len(order), batch_size):
        yield collate([dataset.features[i] for i in order[begin: begin + batch_size]], dataset.pad_token_id)


def collate(features: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest in the batch (right padding); padded label positions carry IGNORE_INDEX."""
    longest = max(len(f["input_ids"]) for f in features)
    pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_INDEX}
    batch = {}
    for key in features[0]:
        if key == "labels" and isinstance(features[0]["labels"], (int, float)):  # one label per example
            dtype = torch.float32 if isinstance(features[0]["labels"], float) else torch.long  # regression: float
            batch[key] = torch.tensor([f["labels"] for f in features], dtype=dtype)
            continue
        rows = [f[key] + [pad_values[key]] * (longest - len(f[key])) for f in features]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch

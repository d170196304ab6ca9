"""Tokenization, the prompt template and batching (with the in-code byte tokenizer: no files, no hub)."""
from __future__ import annotations

import pytest
import torch

from declora.learn.batching import batches, collate, epoch_order, eval_batches
from declora.learn.examples import InstructionExample, TextExample
from declora.learn.tiny_models import byte_tokenizer
from declora.learn.tokenize import IGNORE_INDEX, PROMPT_NO_CONTEXT, TokenizedDataset, format_prompt, tokenize
from tests.tiny_models import dolly_examples, sentiment_examples, torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def bert_tok():
    return byte_tokenizer("bert")


@pytest.fixture(scope="module")
def llama_tok():
    return byte_tokenizer("llama")


def test_classification_features_truncate_and_keep_labels(bert_tok):
    examples = [TextExample("x" * 100, 1), TextExample("ab", 0)]
    data = tokenize(examples, bert_tok, max_length=16)
    assert data.task == "classification" and len(data) == 2
    assert len(data.features[0]["input_ids"]) == 16
    assert data.features[1]["input_ids"] == [bert_tok.cls_token_id, *bert_tok("ab", add_special_tokens=False)["input_ids"],
                                             bert_tok.sep_token_id]
    assert [f["labels"] for f in data.features] == [1, 0]
    pairs = tokenize([TextExample("ab", 0, "cd")], bert_tok, max_length=16)
    assert pairs.features[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]


def test_prompt_template_has_alpaca_sections():
    with_context, without = dolly_examples()[1], dolly_examples()[0]
    assert "### Input:\nThe cat sat" in format_prompt(with_context)
    assert format_prompt(without) == PROMPT_NO_CONTEXT.format(instruction="What is the capital of France?")
    assert format_prompt(without).endswith("### Response:\n")


def test_causal_lm_loss_is_on_the_response_only(llama_tok):
    example = InstructionExample("Say hi.", "hi")
    feature = tokenize([example], llama_tok, max_length=512).features[0]
    prompt_len = len(llama_tok(format_prompt(example))["input_ids"])
    response = llama_tok("hi", add_special_tokens=False)["input_ids"] + [llama_tok.eos_token_id]
    assert feature["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert feature["labels"][prompt_len:] == response == feature["input_ids"][prompt_len:]


def test_long_prompts_still_leave_response_tokens(llama_tok):
    example = InstructionExample("Summarize.", "short answer here", context="word " * 500)
    feature = tokenize([example], llama_tok, max_length=64).features[0]
    assert len(feature["input_ids"]) == 64
    learned = [t for t in feature["labels"] if t != IGNORE_INDEX]
    assert len(learned) >= 64 // 4


def test_task_mismatch_is_an_error(bert_tok):
    with pytest.raises(ValueError, match="instruction records"):
        tokenize(dolly_examples(), bert_tok, task="classification")
    with pytest.raises(ValueError, match="labeled text"):
        tokenize(sentiment_examples(), bert_tok, task="causal_lm")


def test_batches_pad_dynamically_and_reshuffle_per_epoch(bert_tok):
    data = tokenize(sentiment_examples(repeat=3), bert_tok, max_length=64)  # 36 examples
    epoch0 = list(batches(data, 8, seed=0, epoch=0))
    assert [len(b["labels"]) for b in epoch0] == [8, 8, 8, 8, 4]
    for batch in epoch0:
        longest = batch["attention_mask"].sum(1).max().item()
        assert batch["input_ids"].shape[1] == longest  # padded to the longest in the batch, not max_length
        assert (batch["input_ids"][batch["attention_mask"] == 0] == bert_tok.pad_token_id).all()
    again = list(batches(data, 8, seed=0, epoch=0))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(epoch0, again))
    assert epoch_order(36, 0, 0) != epoch_order(36, 0, 1)
    assert sorted(epoch_order(36, 0, 1)) == list(range(36))
    resumed = list(batches(data, 8, seed=0, epoch=0, start=2))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(epoch0[2:], resumed))
    assert sum(len(b["labels"]) for b in eval_batches(data, 8)) == 36


def _lengths_dataset(n: int, seed: int = 0) -> TokenizedDataset:
    """n examples of random lengths 1..60 whose first token is their index (so batches say who is in them)."""
    lengths = torch.randint(1, 61, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    features = [{"input_ids": [i] + [7] * (k - 1), "attention_mask": [1] * k, "labels": i % 2}
                for i, k in enumerate(lengths)]
    return TokenizedDataset("classification", features, 0)


def test_length_grouped_batches_see_every_example_once_with_less_padding():
    data = _lengths_dataset(1000)
    plain = list(batches(data, 32, seed=3, epoch=1))
    grouped = list(batches(data, 32, seed=3, epoch=1, group_by_length=True))
    ids = [row[0].item() for b in grouped for row in b["input_ids"]]
    assert sorted(ids) == list(range(1000))  # a permutation: every example once per epoch
    assert [len(b["labels"]) for b in grouped] == [len(b["labels"]) for b in plain]
    padded = {name: sum(b["input_ids"].numel() for b in bs) for name, bs in (("plain", plain), ("grouped", grouped))}
    real = sum(len(f["input_ids"]) for f in data.features)
    assert padded["grouped"] < 1.2 * real < padded["plain"]  # grouping removes most of the padding
    # Not sorted over the whole epoch: long and short batches are interleaved.
    widths = [b["input_ids"].shape[1] for b in grouped[:-1]]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    # Deterministic in (seed, epoch), different across epochs, and a resume continues the same order.
    again = list(batches(data, 32, seed=3, epoch=1, group_by_length=True))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(grouped, again))
    other = [row[0].item() for b in batches(data, 32, seed=3, epoch=2, group_by_length=True) for row in b["input_ids"]]
    assert other != ids
    resumed = list(batches(data, 32, seed=3, epoch=1, start=5, group_by_length=True))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(grouped[5:], resumed))


def test_causal_lm_batches_mask_padding_in_labels(llama_tok):
    data = tokenize(dolly_examples(), llama_tok, max_length=128)
    batch = collate(data.features[:3], data.pad_token_id)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()

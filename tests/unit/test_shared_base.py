"""One frozen base for several peers in a process: the weights become the same tensors, only when they are equal."""
from __future__ import annotations

import pytest
import torch

from declora.learn.model import ModelSpec, build_model
from declora.learn.shared_base import share_frozen_weights


def test_frozen_weights_become_the_first_peers_and_trainable_ones_stay_apart():
    first, _ = build_model(ModelSpec(path="tiny-bert"), rank=4, alpha=8, seed=0)
    second, _ = build_model(ModelSpec(path="tiny-bert"), rank=2, alpha=4, seed=1)  # another rank: the base is the same
    frozen = {n: p for n, p in second.named_parameters() if not p.requires_grad}
    freed = share_frozen_weights(second, first)
    assert freed == sum(p.numel() * p.element_size() for p in frozen.values()) > 0
    mine, theirs = dict(second.named_parameters()), dict(first.named_parameters())
    for name, param in mine.items():
        if param.requires_grad:  # the adapter and the head: each peer's own
            assert param.data_ptr() != theirs[name].data_ptr()
        else:
            assert param is theirs[name]
    batch = {"input_ids": torch.tensor([[1, 5, 9, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([1])}
    second(**batch).loss.backward()  # training the second touches only its own tensors
    assert all(p.grad is None for p in first.parameters())


def test_a_different_base_is_refused():
    first, _ = build_model(ModelSpec(path="tiny-bert"), rank=2, alpha=4)
    second, _ = build_model(ModelSpec(path="tiny-bert"), rank=2, alpha=4)
    with torch.no_grad():
        next(p for p in second.parameters() if not p.requires_grad).add_(1.0)
    with pytest.raises(ValueError, match="differs from the first peer's"):
        share_frozen_weights(second, first)
    llama, _ = build_model(ModelSpec(path="tiny-llama", task="causal_lm"), rank=2, alpha=4)
    with pytest.raises(ValueError, match="no twin"):
        share_frozen_weights(llama, first)

"""Drift correction's hooks into training (learn.live_adapter, Learner.train(correction=...)): a "step" correction
moves the live model itself after every step, scaled like the step; a "gradient" one is what the optimizer sees,
and its mean comes back; FFA's frozen A does not move."""
from __future__ import annotations

import torch

from declora.core.drift import Correction, combine
from declora.learn.learner import Learner
from declora.learn.live_adapter import freeze_lora_A, offset_applier
from declora.learn.model import build_model, read_adapter
from declora.learn.tokenize import TokenizedDataset
from declora.learn.training import LocalTrainer, TrainConfig


def learner(schedule: str = "constant", steps: int = 2) -> Learner:
    from declora.learn.model import ModelSpec

    model, tok = build_model(ModelSpec("tiny-bert", "classification", 2), 2, 4.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    data = TokenizedDataset("classification", [{"input_ids": torch.randint(5, 60, (12,), generator=gen).tolist(),
                                                "attention_mask": [1] * 12, "labels": i % 2} for i in range(16)])
    cfg = TrainConfig(lr=1e-3, batch_size=4, local_steps=steps, schedule=schedule, total_steps=4 * steps)
    return Learner(model, tok, LocalTrainer(model, data, cfg, seed=0), None, "classification", 2, 0)


def test_offset_applier_moves_the_live_parameters():
    lrn = learner()
    before = read_adapter(lrn.model)
    offset = combine([(0.01, before)])
    offset_applier(lrn.model, offset)(1.0)
    after = read_adapter(lrn.model)
    for k, f in after.factors.items():
        torch.testing.assert_close(f.A, 0.99 * before.factors[k].A)
    for k, t in after.dense.items():
        torch.testing.assert_close(t, 0.99 * before.dense[k])


def test_a_training_round_with_an_offset_ends_where_the_same_round_without_it_ends_minus_k_offsets():
    """With a constant schedule every step subtracts the whole offset. The offset here is tiny, so the steps
    themselves barely change (AdamW normalizes), and the difference is K offsets up to that."""
    a, b = learner(), learner()
    start = read_adapter(a.model)
    offset = combine([(1e-2, start)])
    a.train()
    b.train(correction=Correction("step", offset))
    diff = combine([(1.0, read_adapter(a.model)), (-1.0, read_adapter(b.model))])
    for k, f in diff.factors.items():
        torch.testing.assert_close(f.A, 2 * offset.factors[k].A, rtol=0.05, atol=2e-4)


def test_frozen_a_stays_put_and_b_trains():
    lrn = learner()
    assert freeze_lora_A(lrn.model) > 0
    lrn.trainer.reset_optimizer()
    before = read_adapter(lrn.model)
    lrn.train()
    after = read_adapter(lrn.model)
    for k, f in after.factors.items():
        assert torch.equal(f.A, before.factors[k].A)
        assert not torch.equal(f.B, before.factors[k].B)


def test_the_offset_is_scaled_like_the_steps_of_a_decaying_schedule():
    """An offset measured in the last round's steps shrinks as the learning rate anneals: the second round of a
    cosine schedule over 4 rounds moves by sum(f_s) / mean(f of round 1) offsets, fewer than K."""
    from declora.learn.training import lr_factor

    a, b = learner("cosine"), learner("cosine")
    a.train(), b.train()
    offset = combine([(1e-2, read_adapter(a.model))])
    a.train()
    b.train(correction=Correction("step", offset))
    cfg = a.trainer.config
    expected = sum(lr_factor(s, cfg) for s in (2, 3)) / (sum(lr_factor(s, cfg) for s in (0, 1)) / 2)
    assert expected < 1.9
    diff = combine([(1.0, read_adapter(a.model)), (-1.0, read_adapter(b.model))])
    for k, f in diff.factors.items():
        torch.testing.assert_close(f.A, expected * offset.factors[k].A, rtol=0.05, atol=2e-4)


def test_a_gradient_correction_is_what_the_optimizer_sees_and_its_mean_comes_back():
    """The same round with a gradient correction c and without: the mean corrected gradient is the plain round's mean
    gradient plus c (up to the trajectories parting), and a huge c in one direction moves the model that way."""
    a, b = learner(), learner()
    start = read_adapter(a.model)
    zero = Correction("gradient", combine([(0.0, start)]))
    a.train(correction=zero)
    push = Correction("gradient", combine([(1.0, start)]))  # a gradient along +x: descent moves towards -x
    b.train(correction=push)
    assert zero.mean_gradient is not None and push.mean_gradient is not None
    key = next(iter(start.factors))
    assert float(zero.mean_gradient.factors[key].B.abs().sum()) > 0  # B's gradient is nonzero from step 1 on
    moved_a = combine([(1.0, read_adapter(a.model)), (-1.0, start)])
    moved_b = combine([(1.0, read_adapter(b.model)), (-1.0, start)])
    # AdamW normalizes: with the push dominating, every A entry moves against its own sign by about lr per step.
    A0, dA = start.factors[key].A, moved_b.factors[key].A
    assert float((dA * A0.sign()).mean()) < -1.5e-3
    assert float((moved_a.factors[key].A * A0.sign()).mean()) > -1e-4

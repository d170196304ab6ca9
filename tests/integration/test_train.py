"""train.py on tiny models: local steps lower the loss, evaluation metrics, optimizer lifetime, exact resume."""
from __future__ import annotations

import math

import pytest
import torch

from declora.core.factors import Adapter, LoraFactor
from declora.learn.evaluation import evaluate
from declora.learn.model import ModelSpec, build_model, merge_delta_and_reset, read_adapter, set_rank, write_adapter
from declora.learn.tokenize import tokenize
from declora.learn.training import LocalTrainer, TrainConfig, lr_factor
from tests.tiny_models import dolly_examples, sentiment_examples, torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


def tiny_bert(rank=4, seed=0, **spec):
    model, tokenizer = build_model(ModelSpec("tiny-bert", **spec), rank=rank, alpha=2 * rank, seed=seed)
    return model, tokenize(sentiment_examples(), tokenizer, max_length=48)


def config(**kw) -> TrainConfig:
    base = dict(lr=1e-2, head_lr=1e-2, batch_size=4, local_steps=5, max_length=48)
    return TrainConfig(**{**base, **kw})


def test_local_steps_reduce_the_loss_on_a_tiny_classifier():
    torch.manual_seed(0)
    model, data = tiny_bert()
    before = evaluate(model, data)
    trainer = LocalTrainer(model, data, config(lr=3e-2, head_lr=3e-2), seed=0)
    first = trainer.train_steps(5)
    for _ in range(5):
        last = trainer.train_steps()
    after = evaluate(model, data)
    assert after["loss"] < before["loss"] - 0.1 and after["accuracy"] > 0.5
    assert last["loss"] < first["loss"]
    assert (last["steps"], last["samples"], trainer.step) == (5, 20, 30)
    assert last["seconds"] > 0 and not last["optimizer_reset"]


def test_causal_lm_training_and_perplexity():
    torch.manual_seed(0)
    model, tokenizer = build_model(ModelSpec("tiny-llama", "causal_lm"), rank=4, alpha=8)
    data = tokenize(dolly_examples(), tokenizer, max_length=160)
    before = evaluate(model, data, batch_size=4)
    assert before["perplexity"] == pytest.approx(math.exp(before["loss"]))
    assert before["tokens"] == sum(sum(1 for t in f["labels"][1:] if t != -100) for f in data.features)
    assert 0.5 * math.log(len(tokenizer)) < before["loss"] < 2 * math.log(len(tokenizer))  # near uniform guessing
    LocalTrainer(model, data, config(lr=3e-2, batch_size=3), seed=0).train_steps(10)
    # A random 32-wide model with a 0.02-scale output layer cannot move its logits far in 10 steps.
    assert evaluate(model, data, batch_size=4)["loss"] < before["loss"] - 0.1


def test_evaluate_matches_a_direct_computation_and_restores_the_mode():
    model, data = tiny_bert()
    write_adapter(model, _noisy(read_adapter(model)))
    model.train()
    metrics = evaluate(model, data, batch_size=5)
    assert model.training
    model.eval()
    from declora.learn.batching import collate

    batch = collate(data.features, data.pad_token_id)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    assert metrics["samples"] == len(data) == 12
    assert metrics["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    evaluate(model, data)
    assert not model.training
    assert evaluate(model, data.head(5))["samples"] == 5


def _noisy(adapter: Adapter, seed: int = 0) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    return Adapter({k: LoraFactor(f.A, torch.randn(f.B.shape, generator=g) * 0.5, f.alpha) for k, f in adapter.factors.items()},
                   {k: torch.randn(t.shape, generator=g) for k, t in adapter.dense.items()})


def test_resume_from_state_dict_continues_identically():
    """Dropout is on (tiny BERT's 0.1) and 12 examples in batches of 4 cross epochs: RNG and data position matter."""
    model, data = tiny_bert(seed=1)
    trainer = LocalTrainer(model, data, config(lr=5e-3), seed=3)
    trainer.train_steps(4)
    adapter, state = read_adapter(model), trainer.state_dict()
    expected = [trainer.train_steps(1)["loss"] for _ in range(4)]

    resumed_model, _ = tiny_bert(seed=1)
    write_adapter(resumed_model, adapter)
    resumed = LocalTrainer(resumed_model, data, config(lr=5e-3), seed=0)
    resumed.load_state_dict(state)
    assert [resumed.train_steps(1)["loss"] for _ in range(4)] == expected
    assert resumed.step == trainer.step == 8
    final, other = read_adapter(model), read_adapter(resumed_model)
    assert all(torch.equal(final.factors[k].A, other.factors[k].A) for k in final.factors)


def test_optimizer_survives_in_place_writes_and_is_rebuilt_for_new_tensors():
    model, data = tiny_bert()
    trainer = LocalTrainer(model, data, config(), seed=0)
    trainer.train_steps(2)
    moments = {id(p): s["exp_avg"].clone() for p, s in trainer.optimizer.state.items()}
    write_adapter(model, _noisy(read_adapter(model)))  # gossip: same rank, values copied in place
    assert trainer.train_steps(1)["optimizer_reset"] is False
    assert all(id(p) in moments for p in trainer.optimizer.state)  # still the same parameters, moments kept

    set_rank(model, 2)  # new LoRA tensors: the trainer notices and rebuilds
    result = trainer.train_steps(1)
    assert result["optimizer_reset"] is True and math.isfinite(result["loss"])
    merge_delta_and_reset(model, read_adapter(model).products(), rank=2)
    assert trainer.train_steps(1)["optimizer_reset"] is True
    assert trainer.step == 5  # the schedule runs on across resets


def test_gradient_accumulation_matches_one_big_batch():
    """tiny LLaMA classifier (no dropout): 2 micro-batches of 4 take the same step as one batch of 8."""
    spec = ModelSpec("tiny-llama", "classification")
    results = []
    for accum in (1, 2):
        model, tokenizer = build_model(spec, rank=4, alpha=8, seed=0)
        data = tokenize(sentiment_examples(), tokenizer, max_length=48)
        trainer = LocalTrainer(model, data, config(batch_size=8, grad_accum=accum, max_grad_norm=0), seed=0)
        loss = trainer.train_steps(1)["loss"]
        results.append((loss, read_adapter(model)))
    (loss1, a1), (loss2, a2) = results
    assert loss1 == pytest.approx(loss2, rel=1e-5)
    for k in a1.factors:
        torch.testing.assert_close(a1.factors[k].B, a2.factors[k].B, atol=1e-6, rtol=1e-4)


def test_low_precision_base_trains_under_autocast():
    model, data = tiny_bert(dtype="bfloat16")
    result = LocalTrainer(model, data, config(), seed=0).train_steps(2)
    assert math.isfinite(result["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert 0.0 <= evaluate(model, data)["accuracy"] <= 1.0


def test_non_finite_loss_stops_with_a_clear_error():
    model, data = tiny_bert()
    broken = read_adapter(model)
    broken.dense = {k: torch.full_like(t, float("nan")) for k, t in broken.dense.items()}
    write_adapter(model, broken)
    with pytest.raises(FloatingPointError, match="training loss is nan"):
        LocalTrainer(model, data, config(), seed=0).train_steps(1)


def test_head_gets_its_own_learning_rate():
    model, data = tiny_bert()
    trainer = LocalTrainer(model, data, config(lr=1e-3, head_lr=5e-3), seed=0)
    assert [g["base_lr"] for g in trainer.optimizer.param_groups] == [1e-3, 5e-3]
    assert LocalTrainer(model, data, config(lr=1e-3, head_lr=None), seed=0).optimizer.param_groups[1]["lr"] == 1e-3


def test_schedules():
    constant = TrainConfig(warmup_steps=4)
    assert [lr_factor(s, constant) for s in (0, 3, 4, 100)] == [0.25, 1.0, 1.0, 1.0]
    linear = TrainConfig(schedule="linear", total_steps=10)
    assert [lr_factor(s, linear) for s in (0, 5, 10, 20)] == [1.0, 0.5, 0.0, 0.0]
    cosine = TrainConfig(schedule="cosine", warmup_steps=2, total_steps=12)
    assert lr_factor(1, cosine) == 1.0 and lr_factor(7, cosine) == pytest.approx(0.5) and lr_factor(12, cosine) == 0.0
    with pytest.raises(ValueError, match="total_steps"):
        TrainConfig(schedule="cosine")
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(batch_size=10, grad_accum=3)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")

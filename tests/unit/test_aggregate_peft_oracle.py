"""`stack` and `svd` against peft's own `add_weighted_adapter` ("cat" and "svd") on a tiny BERT.

peft's conventions (peft/tuners/lora/model.py, read for peft 0.21):
- "cat": A_new = cat_j(w_j * scaling_j * A_j), B_new = cat_j(B_j); the new adapter gets r = lora_alpha = sum r_j.
  No sqrt of the weights: the weight and the scaling both go on A, exactly our `stack`.
- "svd": delta = sum_j w_j * get_delta_weight(j) (scaling included), truncated SVD to svd_rank, B = U_r S_r,
  A = Vh_r, new r = lora_alpha = svd_rank. Same product as our `svd`, different factor balance and signs,
  so only products are compared.
In both the new adapter copies the first adapter's config with lora_alpha = r, so its scaling is 1 only when the
first adapter does not use rsLoRA (with rsLoRA it would be sqrt(r)); the first adapter here is plain LoRA.
The weights sum to 1 (ours must; peft's need not, and then both are the same plain weighted sum).
"""
from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from declora.core.aggregate import merged_delta, stack, svd  # noqa: E402
from declora.core.factors import Adapter, LoraFactor  # noqa: E402

ADAPTERS = {  # name -> (r, alpha, rslora); different ranks and scalings
    "p0": (2, 4.0, False),
    "p1": (4, 16.0, False),
    "p2": (3, 6.0, True),
}
WEIGHTS = [0.5, 0.3, 0.2]


@pytest.fixture(scope="module")
def peft_model():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    base = transformers.BertModel(config)
    model = None
    for name, (r, alpha, rslora) in ADAPTERS.items():
        lora = peft.LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=["query", "value"])
        if model is None:
            model = peft.get_peft_model(base, lora, adapter_name=name)
        else:
            model.add_adapter(name, lora)
    for module in lora_layers(model).values():
        for name in ADAPTERS:  # a trained adapter, not a fresh one with B = 0
            torch.nn.init.normal_(module.lora_B[name].weight)
    return model


def lora_layers(model) -> dict:
    from peft.tuners.lora import LoraLayer

    return {key: m for key, m in model.named_modules() if isinstance(m, LoraLayer)}


def read_adapter(model, name: str) -> Adapter:
    _, alpha, rslora = ADAPTERS[name]
    factors = {}
    for key, m in lora_layers(model).items():
        f = LoraFactor(m.lora_A[name].weight.detach().clone(), m.lora_B[name].weight.detach().clone(), alpha, rslora)
        assert f.scaling == pytest.approx(m.scaling[name])  # our scaling convention is peft's
        factors[key] = f
    return Adapter(factors)


def peft_deltas(model, name: str) -> dict[str, torch.Tensor]:
    return {key: m.get_delta_weight(name).detach() for key, m in lora_layers(model).items()}


def rel_err(X, Y) -> float:
    return float(torch.linalg.norm(X.double() - Y.double()) / torch.linalg.norm(Y.double()))


def test_stack_matches_peft_cat(peft_model):
    adapters = [read_adapter(peft_model, name) for name in ADAPTERS]
    peft_model.base_model.add_weighted_adapter(list(ADAPTERS), WEIGHTS, "cat", combination_type="cat")
    expected = peft_deltas(peft_model, "cat")
    ours = stack(adapters, WEIGHTS)
    deltas = merged_delta(ours)
    assert len(expected) == 4  # 2 layers x (query, value)
    for key, delta in expected.items():
        assert ours.factors[key].r == sum(r for r, _, _ in ADAPTERS.values())
        assert rel_err(deltas[key], delta) < 1e-5
    # and the factors themselves are peft's, slot for slot
    key, m = next(iter(lora_layers(peft_model).items()))
    torch.testing.assert_close(ours.factors[key].A, m.lora_A["cat"].weight.detach())
    torch.testing.assert_close(ours.factors[key].B, m.lora_B["cat"].weight.detach())


@pytest.mark.parametrize("svd_rank", [3, 9])  # below and at the stacked rank R = 9
def test_svd_matches_peft_svd(peft_model, svd_rank):
    adapters = [read_adapter(peft_model, name) for name in ADAPTERS]
    new = f"svd{svd_rank}"
    peft_model.base_model.add_weighted_adapter(list(ADAPTERS), WEIGHTS, new, combination_type="svd", svd_rank=svd_rank)
    expected = peft_deltas(peft_model, new)
    ours = svd(adapters, WEIGHTS, rank=svd_rank, alpha=8.0)
    for key, delta in expected.items():
        assert ours.factors[key].r == svd_rank
        assert rel_err(ours.factors[key].product(), delta) < 1e-4

"""declora.node.average_model on tiny-bert: the exact mean of the peers' effective deltas goes into the base, the head is
averaged, the spreads measure disagreement, and a run folder's checkpoints are read per round. No processes."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch

from declora.learn.model import ModelSpec, build_model, lora_layers, merge_delta_and_reset, read_adapter, write_adapter
from declora.node.average_model import (AverageModel, PeerState, evaluate_average_model, load_peer_states, mean_delta,
                                        spreads)
from declora.node.checkpoint import adapter_to_state, common_rounds, saved_rounds, save_checkpoint
from declora.config import ConfigError, RunConfig, resolve, write_run_config
from declora.core.factors import Adapter, LoraFactor
from tests.tiny_models import sentiment_rows, torch_threads, write_sst_tsv

BERT = ModelSpec("tiny-bert", "classification", num_labels=2)
ALPHA = 8.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


@lru_cache(maxsize=None)
def template(rank: int) -> Adapter:
    model, _ = build_model(BERT, rank=rank, alpha=ALPHA, seed=0)
    return read_adapter(model)


def random_adapter(rank: int, seed: int, scale: float = 0.3) -> Adapter:
    """A tiny-bert adapter of `rank` with random A, B and head (B nonzero: the product matters)."""
    g = torch.Generator().manual_seed(seed)
    factors = {k: LoraFactor(torch.randn(f.A.shape, generator=g) * scale, torch.randn(f.B.shape, generator=g) * scale,
                             f.alpha, f.rslora) for k, f in template(rank).factors.items()}
    dense = {k: torch.randn(t.shape, generator=g) * scale for k, t in template(rank).dense.items()}
    return Adapter(factors, dense)


def random_merged(adapter: Adapter, seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(f.out_features, f.in_features, generator=g) * scale for k, f in adapter.factors.items()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as `declora simulate` leaves it: config.json and three peers' checkpoints of rounds 0-2, with
    heterogeneous ranks and merged deltas (stack mode)."""
    root = tmp_path_factory.mktemp("run")
    train = write_sst_tsv(root / "train.tsv", sentiment_rows(repeat=4))
    dev = write_sst_tsv(root / "dev.tsv")
    cfg = resolve(None, model="tiny-bert", data=str(train), eval_data=str(dev), peers=3, ranks="4,2,3", alpha=ALPHA,
                  mode="stack", max_length=32, out=str(root), partition="iid", keep_checkpoints=0)
    write_run_config(cfg, root / "config.json")
    for t in range(3):
        for p, r in enumerate(cfg.rank_list()):
            adapter = random_adapter(r, seed=100 * t + p)
            merged = random_merged(adapter, 7 + t + p)
            state = {"round": t, "adapter": adapter_to_state(adapter), "merged_delta": merged}
            save_checkpoint(root, p, t, state, keep_rounds=cfg.keep_checkpoints)
    return root


@pytest.fixture(scope="module")
def avg(run_dir) -> AverageModel:
    return AverageModel.for_run(run_dir)


# ---- the arithmetic -------------------------------------------------------------------------------------------------
def test_the_base_gets_the_exact_mean_of_effective_deltas_whatever_the_ranks(avg, run_dir):
    states = load_peer_states(run_dir, 1)
    assert [s.adapter.factors[next(iter(s.adapter.factors))].r for s in states] == [4, 2, 3]
    avg.load(states)
    for key, layer in lora_layers(avg.model).items():
        expected = sum(s.merged[key] + s.adapter.factors[key].product() for s in states) / 3
        got = layer.get_base_layer().weight - avg._pristine[key]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # the fresh adapter adds nothing
    head = read_adapter(avg.model).dense
    for name, tensor in head.items():
        torch.testing.assert_close(tensor, sum(s.adapter.dense[name] for s in states) / 3)


def test_loading_another_round_replaces_the_delta_instead_of_adding_to_it(avg, run_dir):
    avg.load(load_peer_states(run_dir, 0))
    avg.load(load_peer_states(run_dir, 2))
    deltas, _ = mean_delta(load_peer_states(run_dir, 2))
    for key, layer in lora_layers(avg.model).items():
        torch.testing.assert_close(layer.get_base_layer().weight - avg._pristine[key], deltas[key], rtol=1e-5,
                                   atol=1e-6)


def test_the_average_of_identical_peers_computes_like_each_peer(avg):
    adapter = random_adapter(3, seed=5)
    merged = random_merged(adapter, seed=6)
    states = [PeerState(i, 0, adapter.clone(), {k: v.clone() for k, v in merged.items()}) for i in range(3)]
    avg.load(states)
    # The peer itself: its merged deltas in the base, its adapter on top.
    peer, tokenizer = build_model(BERT, rank=3, alpha=ALPHA, seed=0)
    merge_delta_and_reset(peer, merged, rank=3)
    write_adapter(peer, adapter)
    batch = tokenizer(["a charming film", "dull and long, really"], padding=True, return_tensors="pt")
    peer.eval()
    avg.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(avg.model(**batch).logits, peer(**batch).logits, rtol=1e-4, atol=1e-5)
    s = spreads(states)
    assert s["consensus_distance"] == pytest.approx(0.0, abs=1e-9)
    assert s["merged_spread"] == 0.0 and s["weight_spread"] == pytest.approx(0.0, abs=1e-20)
    assert s["mean_delta_norm2"] > 0


def test_spreads_separate_the_merged_drift_from_the_adapters():
    adapter = random_adapter(2, seed=1)
    zero_B = Adapter({k: LoraFactor(f.A, torch.zeros_like(f.B), f.alpha) for k, f in adapter.factors.items()},
                     adapter.dense)
    M = random_merged(adapter, seed=2)
    states = [PeerState(0, 0, zero_B.clone(), {k: m.clone() for k, m in M.items()}),
              PeerState(1, 0, zero_B.clone(), {k: -m for k, m in M.items()})]
    s = spreads(states)
    norm2 = sum(float((m.double() ** 2).sum()) for m in M.values())
    assert s["merged_spread"] == pytest.approx(norm2, rel=1e-9)  # each is ||M|| from the mean 0
    assert s["weight_spread"] == pytest.approx(norm2, rel=1e-9)
    assert s["consensus_distance"] == pytest.approx(0.0, abs=1e-12)  # the adapters (B = 0) agree
    assert s["mean_delta_norm2"] == pytest.approx(0.0, abs=1e-12)
    deltas, _ = mean_delta(states)
    assert all(torch.count_nonzero(d) == 0 for d in deltas.values())


def test_mismatched_peers_are_refused():
    a, b = random_adapter(2, seed=1), random_adapter(2, seed=2)
    del b.factors[next(iter(b.factors))]
    with pytest.raises(ValueError, match="other modules"):
        mean_delta([PeerState(0, 0, a), PeerState(1, 0, b)])
    with pytest.raises(ValueError, match="at least one peer"):
        mean_delta([])


# ---- a run folder ---------------------------------------------------------------------------------------------------
def test_every_round_is_kept_with_keep_checkpoints_0_and_evaluated(avg, run_dir):
    assert common_rounds(run_dir) == [0, 1, 2] == avg.rounds(run_dir)
    result = avg.evaluate_round(run_dir, 2)
    assert result["round"] == 2 and result["peers"] == 3 and result["samples"] == len(sentiment_rows())
    assert 0.0 <= result["accuracy"] <= 1.0 and result["loss"] > 0
    assert result["merged_spread"] > 0 and result["consensus_distance"] > 0
    assert result["weight_spread"] > 0
    # The one-shot helper takes the latest common round and agrees with the reused model.
    one_shot = evaluate_average_model(run_dir, eval_limit=4)
    assert one_shot["round"] == 2 and one_shot["samples"] == 4
    assert one_shot["merged_spread"] == pytest.approx(result["merged_spread"])


def test_a_run_with_another_eval_set_is_refused(avg, run_dir, tmp_path):
    other = tmp_path / "other"
    dev = write_sst_tsv(tmp_path / "dev2.tsv", sentiment_rows()[:4])
    cfg = resolve(None, model="tiny-bert", data=str(run_dir / "train.tsv"), eval_data=str(dev), peers=3,
                  ranks="4,2,3", alpha=ALPHA, max_length=32, out=str(other), partition="iid", mode="svd")
    write_run_config(cfg, other / "config.json")
    with pytest.raises(ValueError, match="another model, eval set"):
        avg.evaluate_round(other, 0)


def test_keep_checkpoints_default_and_pruning(tmp_path):
    assert RunConfig().keep_checkpoints == 2
    with pytest.raises(ConfigError, match="keep-checkpoints"):
        resolve(None, keep_checkpoints=-1)
    state = {"round": 0, "adapter": adapter_to_state(random_adapter(2, seed=0)), "merged_delta": {}}
    for t in range(4):
        save_checkpoint(tmp_path / "default", 0, t, state)
        save_checkpoint(tmp_path / "one", 0, t, state, keep_rounds=1)
        save_checkpoint(tmp_path / "all", 0, t, state, keep_rounds=0)
    assert saved_rounds(tmp_path / "default", 0) == [2, 3]
    assert saved_rounds(tmp_path / "one", 0) == [3]
    assert saved_rounds(tmp_path / "all", 0) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="keep_rounds"):
        save_checkpoint(tmp_path / "bad", 0, 0, state, keep_rounds=-1)

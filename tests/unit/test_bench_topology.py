"""Smoke test of benchmarks/bench_topology.py on a tiny network (no files written)."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks import bench_topology as bt


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: with several intra-op threads on a busy machine, thread wake-ups cost 10x the arithmetic.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_default_graphs_pick_the_squarest_torus():
    assert bt.default_graphs(16) == ["ring:16", "torus:4x4", "exp:16", "complete:16"]
    assert bt.default_graphs(7) == ["ring:7", "exp:7", "complete:7"]  # a prime has no torus


def test_tiny_run_meets_the_spectral_bound():
    result = bt.run(["ring:6", "torus:2x3", "complete:6"], rounds=4, n=6, modules=1, dim=12, rank=2, alpha=4.0)
    assert result["start"]["consensus_distance_dense_check_rel_err"] < 1e-12
    for row in result["rows"]:
        assert row["gossip_vs_matrix_form_max_rel_err"] <= bt.MATRIX_FORM_TOL
        assert row["bound_holds"] and row["every_round_within_bound"], row["graph"]
        assert row["measured_contraction"] <= row["predicted_contraction"] + bt.SLACK
        s = row["series"]
        assert len(s["factor_disagreement"]) == 5
        assert s["consensus_distance_gossip"][-1] < s["consensus_distance_gossip"][0]
        assert s["consensus_distance_svd"][-1] < s["consensus_distance_svd"][0]
    complete = result["rows"][-1]
    assert complete["rounds_measured"] == 1 and complete["final_factor_disagreement_rel"] < 1e-24


def test_contraction_is_the_geometric_mean_of_round_ratios():
    rate, T = bt.contraction([1.0, 0.5, 0.125, 0.03125], floor=1e-24)
    assert T == 3 and math.isclose(rate, (0.5 * 0.25 * 0.25) ** (1 / 3), rel_tol=1e-12)
    rate, T = bt.contraction([1.0, 0.0, 0.0], floor=1e-24)  # exact consensus in one round
    assert (rate, T) == (0.0, 1)


def test_main_prints_a_table_without_writing(capsys):
    assert bt.main(["--threads", "1", "--n", "4", "--rounds", "2", "--modules", "1", "--dim", "8", "--rank", "2", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| ring:4 |" in out and "| complete:4 |" in out and "holds on every graph" in out

"""bench_convergence's statistics on numbers whose answers are known in closed form: the t-interval, the paired and
Welch t-tests, Holm's correction, and which pairs of methods the script compares (paired by seed or not)."""
from __future__ import annotations

import math

import pytest

from benchmarks.convergence_stats import (ci_markdown, compare, comparisons, holm, mean_ci, mean_records,
                                          significance_markdown)

T_975_DF2 = 4.302652729911275  # the two-sided 95% quantile of Student's t with 2 degrees of freedom (tables)


def test_mean_and_95_percent_interval_of_three_values():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["sd"] == pytest.approx(1.0)
    assert ci["half_width"] == pytest.approx(T_975_DF2 / math.sqrt(3))
    assert mean_ci([0.8])["half_width"] is None  # one seed: no spread known


def test_paired_t_test_on_known_differences():
    # Differences 0.5, 0.6, 0.4: mean 0.5, sd 0.1, t = 0.5 / (0.1 / sqrt 3) = 5 sqrt 3. With 2 degrees of freedom
    # the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p is 1 - t / sqrt(2 + t^2).
    a, b = {0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.5, 1: 1.4, 2: 2.6}
    c = compare(a, b, paired=True)
    t = 5 * math.sqrt(3)
    assert c["test"] == "paired t" and c["n"] == 3
    assert c["diff"] == pytest.approx(0.5) and c["half_width"] == pytest.approx(T_975_DF2 * 0.1 / math.sqrt(3))
    assert c["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))  # 0.0131
    assert c["significant"]
    # The same values unpaired: the spread between seeds (sd 1) hides the 0.5 difference.
    assert not compare(a, b, paired=False)["significant"]


def test_paired_test_uses_only_the_seeds_both_ran():
    c = compare({0: 0.80, 1: 0.82, 2: 0.81}, {0: 0.79, 2: 0.80}, paired=True)
    assert c["n"] == 2 and c["diff"] == pytest.approx(0.01)
    assert c["p"] == 0.0  # both seeds moved by exactly 0.01: no spread, t is infinite
    assert compare({0: 0.8}, {0: 0.7}, paired=True)["p"] is None  # one pair: no test


def test_welch_t_test_on_known_values():
    # [1,2,3] vs [4,5,6]: difference -3, standard error sqrt(2/3), t = -3.674, Welch's 4 degrees of freedom;
    # Student's t CDF with 4 dof in closed form gives p = 0.021312.
    c = compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 4.0, 1: 5.0, 2: 6.0}, paired=False)
    t = 3 / math.sqrt(2 / 3)
    u = 1 + t * t / 4
    cdf = 0.5 + 0.375 * (t / math.sqrt(u)) * (1 - t * t / (12 * u))
    assert c["test"] == "Welch t" and c["diff"] == pytest.approx(-3.0)
    assert c["p"] == pytest.approx(2 * (1 - cdf)) and c["p"] == pytest.approx(0.021312, abs=1e-6)
    assert c["significant"]


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03, None]) == [True, False, False, False]  # 0.03 > 0.05 / 2: stops there
    assert holm([0.001, 0.02, 0.04]) == [True, True, True]  # 0.001 < .05/3, 0.02 < .05/2, 0.04 < .05/1
    assert holm([]) == []


def record(method: str, seed: int, acc: float, partition: str = "dirichlet:0.5", group: str = "r=8",
           codec: str = "fp32") -> dict:
    spec = {"method": method, "ranks": "8", "codec": codec, "error_feedback": False, "partition": partition,
            "group": group, "seed": seed}
    name = f"{method}-{seed}"
    return {"name": name, "label": method, "spec": spec, "status": "ok",
            "final": {"avg_model_accuracy": acc, "avg_model_holdout_accuracy": acc - 0.01, "peer_accuracy_mean": acc,
                      "peer_accuracy_min": acc - 0.02, "mb_sent_per_peer": 1.0, "mb_busiest_process": 2.0,
                      "busiest_process": "peer 0", "wall_s": 10.0},
            "rounds": [{"round": 0, "avg_model": {"accuracy": acc - 0.1}},
                       {"round": 1, "avg_model": {"accuracy": acc}}]}


def suite() -> list[dict]:
    runs = []
    for seed, (cen, ring, exp, iid) in enumerate([(0.86, 0.82, 0.84, 0.84), (0.85, 0.81, 0.82, 0.83),
                                                  (0.87, 0.83, 0.83, 0.85)]):
        runs += [record("centralized", seed, cen), record("gossip-ring", seed, ring), record("gossip-exp", seed, exp),
                 record("gossip-ring", seed, iid, partition="iid", group="iid"),
                 record("gossip-exp", seed, exp + 0.001, group="codecs", codec="int8")]
    return runs


def test_mean_records_average_the_seeds():
    means = {m["name"]: m for m in (dict(m, name=m["spec"]["method"] + m["spec"]["partition"] + m["spec"]["codec"])
                                    for m in mean_records(suite()))}
    ring = means["gossip-ringdirichlet:0.5fp32"]
    assert ring["seeds"] == [0, 1, 2] and ring["spec"]["seed"] == 0
    assert ring["final"]["avg_model_accuracy"] == pytest.approx(0.82)
    assert ring["final_ci"]["avg_model_accuracy"]["half_width"] == pytest.approx(T_975_DF2 * 0.01 / math.sqrt(3))
    assert [r["avg_model"]["accuracy"] for r in ring["rounds"]] == pytest.approx([0.72, 0.82])


def test_which_pairs_are_compared_and_how():
    found = {(c["a"].split("-r8")[0] + c["a"].split("-")[-1], c["b"].split("-r8")[0] + c["b"].split("-")[-1]): c
             for c in comparisons(suite())}
    cen_ring = found[("centralizeddir0.5", "gossip-ringdir0.5")]
    # Same partition: paired by seed. centralized - ring = 0.04 at every seed: significant.
    assert cen_ring["test"] == "paired t" and cen_ring["diff"] == pytest.approx(0.04) and cen_ring["significant"]
    # Different partitions (IID ring vs Dirichlet ring share no split): Welch.
    assert found[("gossip-ringdir0.5", "gossip-ringiid")]["test"] == "Welch t"
    # A codec run against its method's fp32 run (paired; +0.001 at every seed).
    codec = found[("gossip-expdir0.5", "gossip-expdir0.5")]
    assert codec["test"] == "paired t" and codec["diff"] == pytest.approx(-0.001)
    # IID ring against centralized on Dirichlet: another partition and another group, not compared.
    assert ("centralizeddir0.5", "gossip-ringiid") not in found
    text = significance_markdown(comparisons(suite()))
    assert "centralized-r8-fp32-dir0.5 vs gossip-ring-r8-fp32-dir0.5: +4.00" in text and "paired t" in text
    assert "| gossip-ring-r8-fp32-dir0.5 | 0,1,2 | 82.00 ± 2.48 |" in ci_markdown(suite())


def test_server_baselines_in_their_own_group_are_compared_with_gossip_on_their_split():
    runs = suite() + [record("fedit", seed, acc, group="server") for seed, acc in enumerate((0.852, 0.829, 0.841))]
    runs += [record("fedit", seed, acc, partition="iid", group="server") for seed, acc in enumerate((0.8, 0.81, 0.79))]
    pairs = {(c["a"], c["b"]): c for c in comparisons(runs)}
    exp_fedit = pairs[("gossip-exp-r8-fp32-dir0.5", "fedit-r8-fp32-dir0.5")]
    # fedit - exp = +0.012, +0.009, +0.011 by seed: paired and significant.
    assert exp_fedit["test"] == "paired t" and exp_fedit["significant"]
    assert exp_fedit["diff"] == pytest.approx(-0.032 / 3)
    assert ("gossip-ring-r8-fp32-dir0.5", "fedit-r8-fp32-dir0.5") in pairs
    # The IID server run meets only what shares its split, method or group (not Dirichlet gossip).
    assert not any("iid" in b and a.startswith("gossip-exp-r8-fp32-dir0.5") for a, b in pairs)

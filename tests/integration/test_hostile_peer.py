"""A hostile peer in a real run (the real peer loop on the in-process network, tiny BERT): six peers on a complete
graph, so every honest peer has five neighbours, one of which (peer 5) sends poison. Nobody dies, and the defences
say what they did in the metrics."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from declora.config import resolve
from declora.node.checkpoint import load_checkpoint
from declora.node.inprocess import run_in_process
from tests.tiny_models import sentiment_rows, write_sst_tsv

HONEST = range(5)
ROUNDS = 3


def run(tmp_path: Path, **overrides) -> tuple[dict[int, list[dict]], Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_sst_tsv(tmp_path / "sentiment.tsv", sentiment_rows(repeat=4))
    out = tmp_path / "run"
    overrides.setdefault("attackers", "5")
    cfg = resolve(model="tiny-bert", task="classification", peers=6, topology="complete:6", rounds=ROUNDS,
                  local_steps=2, batch_size=4, max_length=32, partition="iid", eval_every=ROUNDS, threads=1,
                  codec="fp32", data=str(data), eval_data=str(data), out=str(out), deadline_s=30.0,
                  save_adapters=False, **overrides)
    run_in_process(cfg, wire="inproc")
    return {i: [json.loads(line) for line in (out / "metrics" / f"peer-{i}.jsonl").read_text().splitlines()]
            for i in range(6)}, out


def final_norm(out: Path, peer: int) -> float:
    state = load_checkpoint(out, peer)["adapter"]
    return math.sqrt(sum(float(f["A"].pow(2).sum() + f["B"].pow(2).sum()) for f in state["factors"].values()))


def test_the_plausibility_check_drops_huge_factors_every_round(tmp_path):
    metrics, out = run(tmp_path, attack="huge")
    for i in HONEST:
        assert [r["implausible"] for r in metrics[i]] == [[5]] * ROUNDS
        assert metrics[i][-1]["rollbacks"] == 0
        assert final_norm(out, i) < 1e3  # the poison never got in


def test_with_the_check_off_a_poisoned_mix_is_rolled_back_not_fatal(tmp_path):
    metrics, out = run(tmp_path, attack="huge", plausible_ratio=0.0)
    for i in HONEST:
        assert len(metrics[i]) == ROUNDS  # every round ran
        assert metrics[i][-1]["rollbacks"] >= 1
        assert all(math.isfinite(r["train_loss"]) for r in metrics[i])
        # The checkpoint keeps the adapter to roll back to, so a resume onto a poisoned mix survives too.
        assert load_checkpoint(out, i)["rollback"]["good"] is not None


@pytest.mark.parametrize("robust", ["clip", "median"])
def test_robust_mixing_bounds_a_sign_flipping_neighbour(tmp_path, robust):
    metrics, out = run(tmp_path, attack="signflip", robust=robust)
    plain, plain_out = run(tmp_path / "plain", attack="signflip")
    for i in HONEST:
        assert len(metrics[i]) == ROUNDS
        if robust == "clip":
            assert any(5 in r["clipped"] for r in metrics[i])
    # Mixed plainly, the flipped adapters drag the honest ones' A around; robustly, they stay like an honest run's.
    clean, clean_out = run(tmp_path / "clean", attack="none", attackers="")
    spread = {name: [final_norm(o, i) for i in HONEST] for name, o in (("robust", out), ("plain", plain_out),
                                                                        ("clean", clean_out))}
    gap = {name: max(abs(a - b) for a, b in zip(v, spread["clean"])) for name, v in spread.items()}
    assert gap["robust"] < gap["plain"], gap

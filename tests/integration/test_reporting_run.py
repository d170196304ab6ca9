"""`declora simulate` reports the metric that judges the run: a classification run judged by MCC with TensorBoard
logging and a centralized reference, and a regression run (float `score` labels) judged by Pearson."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_simulate import ok, simulate
from tests.tiny_models import sentiment_rows, write_sst_tsv

pytestmark = pytest.mark.slow

TINY = ["--model", "tiny-bert", "--peers", "2", "--rounds", "2", "--local-steps", "1", "--insecure",
        "--batch-size", "8", "--max-length", "32", "--eval-every", "1"]


def records(out: Path, peer: int) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics" / f"peer-{peer}.jsonl").read_text().splitlines()]


def test_classification_judged_by_mcc_with_tensorboard_and_a_reference(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = write_sst_tsv(tmp_path / "train.tsv", sentiment_rows(4))
    reference = tmp_path / "central"
    reference.mkdir()
    (reference / "summary.json").write_text(json.dumps({"mode": "centralized", "final": {"mcc_mean": 0.25}}))
    proc, out = simulate(tmp_path, *TINY, "--data", str(train), "--eval-data", str(train), "--metric", "mcc",
                         "--report-to", "tensorboard", "--reference", str(reference))
    ok(proc)
    summary = json.loads((out / "summary.json").read_text())
    final = summary["final"]
    assert final["metric"] == "mcc" and -1.0 <= final["metric_min"] <= final["metric_max"] <= 1.0
    assert set(final["metric_per_peer"]) == {"0", "1"}
    assert {"accuracy_mean", "f1_mean", "f1_macro_mean", "mcc_mean", "loss_mean"} <= set(final)
    assert summary["reference"]["value"] == 0.25 and summary["reference"]["metric"] == "mcc"
    assert "round   2/2 | mcc mean" in proc.stdout
    assert "final mcc mean" in proc.stdout and "centralized reference 0.2500" in proc.stdout
    table = proc.stdout[proc.stdout.index("peer  final mcc"):].splitlines()
    assert "rounds heard in full" in table[0] and table[1].split()[0] == "0" and table[1].split()[-1] == "2/2"
    assert table[2].split()[0] == "1"
    title = Image.open(out / "eval_mcc.png").text["Title"]
    assert title == "2 peers, gossip on ring:2, codec int8 over plain text, 2 rounds x 1 steps"
    assert all(r["metric"] == "mcc" and r["neighbours"] == 1 for r in records(out, 0))
    for folder in ("peer-0", "peer-1", "run"):
        events = EventAccumulator(str(out / "tensorboard" / folder))
        events.Reload()
        assert [e.step for e in events.Scalars("eval/mcc")] == [1, 2]
        assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    events = EventAccumulator(str(out / "tensorboard" / "peer-0"))
    events.Reload()
    assert [e.value for e in events.Scalars("wire/bytes_sent")] == [float(r["bytes_sent"]) for r in records(out, 0)]


def test_regression_on_float_scores_is_judged_by_pearson(tmp_path):
    rows = [(text, 4.0 * label + 0.25 * (i % 4)) for i, (text, label) in enumerate(sentiment_rows(4))]
    data = tmp_path / "sts.tsv"
    data.write_text("sentence\tscore\n" + "".join(f"{text}\t{score}\n" for text, score in rows))
    proc, out = simulate(tmp_path, *TINY, "--data", str(data), "--eval-data", str(data), "--partition", "iid")
    ok(proc)
    final = json.loads((out / "summary.json").read_text())["final"]
    assert final["metric"] == "pearson" and {"mse_mean", "spearman_mean", "loss_mean"} <= set(final)
    assert final["mse_mean"] == final["loss_mean"] > 0
    last = records(out, 1)[-1]
    assert {"eval_pearson", "eval_spearman", "eval_mse"} <= set(last) and last["metric"] == "pearson"
    assert "round   2/2 | pearson mean" in proc.stdout and "peer  final pearson" in proc.stdout
    assert (out / "eval_pearson.png").exists()

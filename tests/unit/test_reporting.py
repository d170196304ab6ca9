"""What a run reports, without running one: the judging metric through the round table, summary, progress line
and end table; the checks of --metric, --report-to and --reference; the TensorBoard scalars of a record."""
from __future__ import annotations

import json

import pytest

from declora.config import ConfigError, resolve
from declora.node.metrics import eval_key, progress_line, round_table, summarize
from declora.node.report import check_reporting, end_table, final_line, load_reference
from declora.node.tensorboard_log import _scalars
from declora.node.workload import resolve_metric
from tests.tiny_models import sentiment_rows, write_sst_tsv


def record(peer: int, t: int, mcc: float | None, heard: int = 2, **extra) -> dict:
    return {"round": t, "peer": peer, "train_loss": 0.5, "neighbours": 2, "neighbours_heard": heard,
            "bytes_sent": 1_000_000, "bytes_received": 2_000_000, "elapsed_s": 1.0, "eval_accuracy": 0.75,
            "eval_mcc": mcc, "eval_loss": 0.4, "eval_samples": 8, "metric": "mcc", **extra}


PER_PEER = {0: [record(0, 0, 0.1), record(0, 1, 0.3)], 1: [record(1, 0, 0.2, heard=1), record(1, 1, 0.5)]}


def test_the_records_metric_drives_the_table_summary_and_progress_line():
    assert eval_key(PER_PEER[0]) == "eval_mcc"
    assert eval_key(PER_PEER[0], "accuracy") == "eval_accuracy"  # the config's choice wins
    assert eval_key([{"eval_loss": 1.0}]) == "eval_loss"  # records from before --metric
    rows = round_table(PER_PEER)
    assert rows[1]["metric"] == "mcc" and rows[1]["eval_mcc_mean"] == pytest.approx(0.4)
    assert rows[1]["eval_mcc_min"] == 0.3 and rows[1]["eval_accuracy_mean"] == 0.75
    assert "mcc mean 0.4000 min 0.3000 max 0.5000" in progress_line(rows[1], 2)
    final = summarize({"mode": "gossip"}, PER_PEER, 1.0)["final"]
    assert final["metric"] == "mcc" and final["metric_mean"] == pytest.approx(0.4)
    assert final["metric_per_peer"] == {0: 0.3, 1: 0.5} and final["metric_higher_is_better"]
    assert final["accuracy_mean"] == 0.75 and final["mcc_mean"] == pytest.approx(0.4) and final["loss_mean"] == 0.4
    assert "perplexity_mean" not in final  # a classification loss has no perplexity
    assert final_line(final, {"value": 0.6}) == ("declora: final mcc mean 0.4000 min 0.3000 max 0.5000; "
                                                 "centralized reference 0.6000")


def test_an_undefined_metric_is_left_out_of_the_means():
    per_peer = {0: [record(0, 0, None)], 1: [record(1, 0, 0.2)]}
    assert summarize({}, per_peer, 1.0)["final"]["metric_mean"] == 0.2


def test_end_table_has_aligned_columns_and_counts_rounds_heard_in_full():
    lines = end_table(PER_PEER, "mcc").splitlines()
    assert lines[0].split("  ")[0] == "peer" and "final mcc" in lines[0] and "rounds heard in full" in lines[0]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert lines[1].split()[1:] == ["0.3000", "2.00", "4.00", "2/2"]
    assert lines[2].split()[-1] == "1/2"  # peer 1 missed a neighbour in round 0


def test_tensorboard_scalars_of_a_record_and_of_a_row():
    scalars = _scalars(PER_PEER[0][1])
    assert scalars["eval/mcc"] == 0.3 and scalars["train/loss"] == 0.5 and scalars["wire/bytes_sent"] == 1e6
    assert "eval/samples" not in scalars
    assert _scalars(round_table(PER_PEER)[1], suffix="_mean")["eval/mcc"] == pytest.approx(0.4)


def data_args(tmp_path) -> dict:
    train = write_sst_tsv(tmp_path / "train.tsv", sentiment_rows(2))
    return {"data": str(train), "eval_data": str(train), "model": "tiny-bert", "out": str(tmp_path / "run")}


@pytest.mark.parametrize("flags,message", [
    ({"report_to": "wandb"}, "--report-to supports only tensorboard"),
    ({"reference": "nowhere"}, "--reference nowhere: no summary.json"),
    ({"metric": "pearson"}, "--metric pearson does not apply to a classification task"),
])
def test_reporting_flags_fail_in_one_line_before_launch(tmp_path, flags, message):
    cfg = resolve(**data_args(tmp_path), **flags)
    with pytest.raises(ConfigError, match=message) as e:
        check_reporting(cfg)
    assert "\n" not in str(e.value)


def test_auto_metric_per_task_and_layout(tmp_path):
    assert resolve_metric(resolve(**data_args(tmp_path))) == "accuracy"
    mrpc = tmp_path / "mrpc.tsv"
    mrpc.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" +
                    "".join(f"{i % 2}\t{i}\t{i + 1}\tsome text {i}\tother text {i}\n" for i in range(8)))
    assert resolve_metric(resolve(data=str(mrpc), eval_data=str(mrpc), model="tiny-bert")) == "f1"
    assert resolve_metric(resolve(task="regression", model="tiny-bert", data=str(mrpc), eval_data=str(mrpc))) \
        == "pearson"
    cola = tmp_path / "cola.tsv"  # CoLA's raw layout: source, label, original mark, sentence; no header
    cola.write_text("".join(f"gj04\t{i % 2}\t{'*' if i % 2 == 0 else ''}\tsentence number {i} .\n" for i in range(10)))
    assert resolve_metric(resolve(data=str(cola), eval_data=str(cola), model="tiny-bert")) == "mcc"


def test_reference_reads_the_same_metric_of_a_finished_run(tmp_path):
    ref = tmp_path / "central"
    ref.mkdir()
    (ref / "summary.json").write_text(json.dumps({"mode": "centralized", "final": {
        "metric": "accuracy", "metric_mean": 0.9, "accuracy_mean": 0.9, "mcc_mean": 0.7}}))
    cfg = resolve(**data_args(tmp_path), reference=str(ref))
    assert load_reference(cfg, "accuracy")["value"] == 0.9
    assert load_reference(cfg, "mcc") == {"run": str(ref), "mode": "centralized", "metric": "mcc", "value": 0.7}
    assert load_reference(cfg, "f1")["value"] is None


def test_missing_tensorboard_is_one_line_with_the_install_hint(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what `import` sees without the package
    with pytest.raises(ConfigError, match=r"pip install -e \.\[tensorboard\]"):
        check_reporting(resolve(**data_args(tmp_path), report_to="tensorboard"))

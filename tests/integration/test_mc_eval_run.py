"""`--mc-eval` in a real run: peers of a causal LM score multiple-choice questions each evaluation round, with the
shared tiny GPT-2 checkpoint (a real BPE tokenizer) and FLoRA's evaluation layout."""
from __future__ import annotations

import json

import pytest

from tests.integration.test_simulate import DOLLY, ok, simulate
from tests.tiny_models import need_tiny_gpt2
from tests.unit.test_multiple_choice import FLORA_RECORDS

pytestmark = pytest.mark.slow


def test_peers_report_multiple_choice_accuracy_per_subject(tmp_path):
    questions = tmp_path / "mmlu_test.json"
    questions.write_text(json.dumps(FLORA_RECORDS * 3))
    proc, out = simulate(tmp_path, "--model", str(need_tiny_gpt2()), "--data", str(DOLLY), "--partition", "files",
                         "--peers", "3", "--rounds", "2", "--local-steps", "1", "--batch-size", "4",
                         "--max-length", "64", "--eval-every", "1", "--mc-eval", str(questions))
    ok(proc)
    for peer in range(3):
        records = [json.loads(line) for line in (out / "metrics" / f"peer-{peer}.jsonl").read_text().splitlines()]
        for record in records:
            assert record["eval_mc_questions"] == 6
            assert 0.0 <= record["eval_mc_accuracy"] <= 1.0
            assert set(record["eval_mc_subjects"]) == {"math", "logic"}
            assert record["eval_loss"] > 0  # the eval loss on the held-out Dolly file is still there


def test_mc_eval_needs_a_causal_lm(tmp_path):
    questions = tmp_path / "mmlu_test.json"
    questions.write_text(json.dumps(FLORA_RECORDS))
    proc, _ = simulate(tmp_path, "--model", "tiny-bert", "--peers", "2", "--rounds", "1", "--mc-eval", str(questions))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--mc-eval" in proc.stderr and "causal" in proc.stderr

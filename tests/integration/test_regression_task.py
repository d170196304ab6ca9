"""The regression task on a tiny model: a one-output head whose training loss is the MSE (transformers reads it
from problem_type), float labels through tokenization and batching, and evaluation's metrics of each task."""
from __future__ import annotations

import pytest
import torch

from declora.learn.batching import collate
from declora.learn.evaluation import evaluate
from declora.learn.examples import TextExample
from declora.learn.model import ModelSpec, build_model
from declora.learn.tokenize import tokenize
from declora.learn.training import LocalTrainer, TrainConfig
from tests.tiny_models import sentiment_examples, sentiment_rows, torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


def scored_examples() -> list[TextExample]:
    return [TextExample(text, 4.0 * label + 0.25 * (i % 4)) for i, (text, label) in enumerate(sentiment_rows())]


def test_a_regression_head_has_one_output_and_trains_on_the_mse():
    torch.manual_seed(0)
    model, tokenizer = build_model(ModelSpec("tiny-bert", task="regression"), rank=4, alpha=8, seed=0)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    data = tokenize(scored_examples(), tokenizer, "regression", max_length=48)
    assert isinstance(data.features[0]["labels"], float)
    batch = collate(data.features[:4], data.pad_token_id)
    assert batch["labels"].dtype == torch.float32
    before = evaluate(model, data)
    assert set(before) == {"mse", "pearson", "spearman", "loss", "samples"} and before["loss"] == before["mse"]
    # The model's own loss on a batch is the MSE of its single output (not a cross-entropy over one class).
    with torch.no_grad():
        model.eval()
        out = model(**batch)
    assert out.loss.item() == pytest.approx(torch.mean((out.logits[:, 0] - batch["labels"]) ** 2).item(), rel=1e-5)
    trainer = LocalTrainer(model, data, TrainConfig(lr=3e-2, head_lr=3e-2, batch_size=4, local_steps=10), seed=0)
    for _ in range(3):
        trainer.train_steps()
    assert evaluate(model, data)["mse"] < before["mse"]


def test_classification_reports_every_metric_and_binary_f1():
    model, tokenizer = build_model(ModelSpec("tiny-bert"), rank=4, alpha=8, seed=0)
    result = evaluate(model, tokenize(sentiment_examples(), tokenizer, max_length=48))
    assert set(result) == {"accuracy", "f1", "f1_macro", "mcc", "loss", "samples"}
    model, tokenizer = build_model(ModelSpec("tiny-bert", num_labels=3), rank=4, alpha=8, seed=0)
    three = [TextExample(e.text, i % 3) for i, e in enumerate(sentiment_examples())]
    assert "f1" not in evaluate(model, tokenize(three, tokenizer, max_length=48))

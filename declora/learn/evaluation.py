"""Evaluation: the metrics of a model on a tokenized dataset, in eval mode, without gradients.

Predictions are collected over all batches and the metrics (declora.learn.metrics) computed once at the end: F1, MCC
and correlations are not means of per-batch values.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from declora.learn.batching import eval_batches
from declora.learn.metrics import classification_metrics, regression_metrics
from declora.learn.tokenize import IGNORE_INDEX, TokenizedDataset
from declora.learn.training import forward_context, model_device


def evaluate(model: nn.Module, dataset: TokenizedDataset, task: str | None = None, batch_size: int = 64) -> dict:
    """Classification: accuracy, f1 (binary tasks), f1_macro, mcc and mean cross-entropy loss. Regression: mse (also
    as loss), pearson, spearman. Causal LM: mean loss per response token and perplexity. Runs in eval mode (no
    dropout) and puts the model back in the mode it was in."""
    task = task or dataset.task
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    was_training = model.training
    device = model_device(model)
    model.eval()
    loss_sum, count, num_labels = 0.0, 0, 0
    preds, truth = [], []
    try:
        with torch.inference_mode():
            for batch in eval_batches(dataset, batch_size):
                batch = {key: t.to(device) for key, t in batch.items()}
                labels = batch.pop("labels")
                with forward_context(model):
                    logits = model(**batch).logits.float()
                if task == "classification":
                    loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
                    preds.append(logits.argmax(-1).cpu().numpy())
                    num_labels = logits.shape[-1]
                elif task == "regression":
                    loss_sum += F.mse_loss(logits[:, 0], labels.float(), reduction="sum").item()
                    preds.append(logits[:, 0].cpu().numpy())
                else:
                    # Position t predicts token t+1; prompt and padding labels are IGNORE_INDEX.
                    targets = labels[:, 1:]
                    loss_sum += F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                                reduction="sum").item()
                    count += (targets != IGNORE_INDEX).sum().item()
                    continue
                truth.append(labels.cpu().numpy())
                count += len(labels)
    finally:
        model.train(was_training)
    if task == "causal_lm":
        loss = loss_sum / max(1, count)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count, "samples": len(dataset)}
    pred, labels = np.concatenate(preds), np.concatenate(truth)
    if task == "classification":
        return {**classification_metrics(pred, labels, num_labels), "loss": loss_sum / count, "samples": count}
    # The mse of the float64 predictions, not loss_sum / count: the two differ in the last bits; report one number.
    found = regression_metrics(pred, labels)
    return {**found, "loss": found["mse"], "samples": count}

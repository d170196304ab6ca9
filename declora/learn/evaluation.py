"""Evaluation: the metrics of a model on a tokenized dataset, in eval mode, without gradients."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from declora.learn.batching import eval_batches
from declora.learn.tokenize import IGNORE_INDEX, TokenizedDataset
from declora.learn.training import forward_context, model_device


def evaluate(model: nn.Module, dataset: TokenizedDataset, task: str | None = None, batch_size: int = 64) -> dict:
    """Classification: accuracy and mean loss. Causal LM: mean loss per response token and perplexity.
    Runs in eval mode (no dropout) and puts the model back in the mode it was in."""
    task = task or dataset.task
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    was_training = model.training
    device = model_device(model)
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    try:
        with torch.inference_mode():
            for batch in eval_batches(dataset, batch_size):
                batch = {key: t.to(device) for key, t in batch.items()}
                labels = batch.pop("labels")
                with forward_context(model):
                    logits = model(**batch).logits.float()
                if task == "classification":
                    loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
                    correct += (logits.argmax(-1) == labels).sum().item()
                    count += len(labels)
                else:
                    # Position t predicts token t+1; prompt and padding labels are IGNORE_INDEX.
                    targets = labels[:, 1:]
                    loss_sum += F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                                reduction="sum").item()
                    count += (targets != IGNORE_INDEX).sum().item()
    finally:
        model.train(was_training)
    if task == "classification":
        return {"accuracy": correct / count, "loss": loss_sum / count, "samples": count}
    loss = loss_sum / max(1, count)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count, "samples": len(dataset)}

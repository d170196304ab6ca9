"""Evaluation metrics: pure functions of predictions and labels (numpy in, a float or None out), and the table of
every metric a run can report or be judged by.

The arithmetic is scikit-learn's and scipy's, not ours. What we add is the degenerate cases that a small or young
model hits all the time (one class predicted everywhere, a constant regression output, one example): they give a
defined number or None, never an exception or a flood of warnings in N peers' logs.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, pred))


def f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of class 1 (GLUE's convention for MRPC and QQP). No positive predicted or present: precision or
    recall is 0/0; we return 0.0 (zero_division=0), the value of a model that finds no positive."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, pred, average="binary", pos_label=1, zero_division=0))


def f1_macro(pred: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over the classes present in labels or predictions; a class with 0/0
    precision or recall counts 0.0 (zero_division=0), as for `f1`."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, pred, average="macro", zero_division=0))


def mcc(pred: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (GLUE's CoLA metric). Constant predictions or constant labels make its denominator 0:
    scikit-learn then returns 0.0, "no better than chance", which is what such a model is; we keep that."""
    from sklearn.metrics import matthews_corrcoef

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the 0/0 case above, already answered by 0.0
        # One class in both labels and predictions (a tiny eval slice): the confusion matrix's shape warning.
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        return float(matthews_corrcoef(labels, pred))


def pearson(pred: np.ndarray, labels: np.ndarray) -> float | None:
    """Pearson r. Undefined when either side is constant (zero variance) or there are fewer than 2 points: we
    return None ("not measured", written as null in the metrics files) rather than NaN (which would poison every
    mean taken over peers) or 0.0 (which would claim a measurement)."""
    return _correlation("pearsonr", pred, labels)


def spearman(pred: np.ndarray, labels: np.ndarray) -> float | None:
    """Spearman rank correlation; None in the same degenerate cases as `pearson`."""
    return _correlation("spearmanr", pred, labels)


def _correlation(name: str, pred: np.ndarray, labels: np.ndarray) -> float | None:
    import scipy.stats

    pred, labels = np.asarray(pred, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(labels) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-constant input warnings: the value is still defined
        value = float(getattr(scipy.stats, name)(pred, labels)[0])
    return value if np.isfinite(value) else None


def mse(pred: np.ndarray, labels: np.ndarray) -> float:
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(labels, dtype=np.float64)
    return float(np.mean(diff * diff))


class Metric(NamedTuple):
    tasks: tuple[str, ...]  # the tasks it applies to
    function: Callable | None  # (predictions, labels) -> float | None; None: computed by evaluation itself (loss)
    higher_is_better: bool


# The name a user gives (--metric) -> the metric. The records carry each as `eval_<name with _ for ->`.
METRICS: dict[str, Metric] = {
    "accuracy": Metric(("classification",), accuracy, True),
    "f1": Metric(("classification",), f1, True),  # binary tasks only (num_labels == 2)
    "f1-macro": Metric(("classification",), f1_macro, True),
    "mcc": Metric(("classification",), mcc, True),
    "pearson": Metric(("regression",), pearson, True),
    "spearman": Metric(("regression",), spearman, True),
    "mse": Metric(("regression",), mse, False),
    "loss": Metric(("classification", "regression", "causal_lm"), None, False),  # the eval loss
    "mc-accuracy": Metric(("causal_lm",), None, True),  # multiple-choice eval sets (declora.learn.multiple_choice)
}


def record_key(name: str) -> str:
    """The key a metric has in a round record: eval_accuracy, eval_f1_macro, eval_mc_accuracy."""
    return "eval_" + name.replace("-", "_")


def classification_metrics(pred: np.ndarray, labels: np.ndarray, num_labels: int) -> dict:
    """Every classification metric of predicted vs true class ids; `f1` only for a binary task."""
    out = {"accuracy": accuracy(pred, labels)}
    if num_labels == 2:
        out["f1"] = f1(pred, labels)
    out.update(f1_macro=f1_macro(pred, labels), mcc=mcc(pred, labels))
    return out


def regression_metrics(pred: np.ndarray, labels: np.ndarray) -> dict:
    return {"mse": mse(pred, labels), "pearson": pearson(pred, labels), "spearman": spearman(pred, labels)}


def metric_problem(name: str, task: str, num_labels: int = 2) -> str | None:
    """Why `--metric name` cannot judge a run of `task` (one line for the user), or None when it can. `auto` and an
    undecided task (auto: the data decides) always pass here; the launcher checks again once the task is known."""
    if name == "auto":
        return None
    if name not in METRICS:
        return f"--metric must be auto or one of {', '.join(METRICS)}, got {name!r}"
    fits = [n for n, metric in METRICS.items() if task in metric.tasks]
    if task != "auto" and task not in METRICS[name].tasks:
        return f"--metric {name} does not apply to a {task} task; use auto or one of {', '.join(fits)}"
    if name == "f1" and task in ("auto", "classification") and num_labels != 2:
        return f"--metric f1 is binary F1 (needs --num-labels 2, got {num_labels}); use f1-macro"
    return None

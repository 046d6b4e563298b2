"""GLUE metrics (SPEC §5), all on a [0, 1] scale (0.85 means 85 %), never percent.

CoLA: Matthews correlation ("mcc"); SST-2, QNLI, RTE, MNLI: "accuracy"; MRPC, QQP:
"accuracy", "f1" (positive class 1) and their mean "acc_and_f1"; STS-B: "pearson",
"spearmanr" and their mean "pearson_and_spearman".

The headline (one number per task, used for the GLUE average) follows the GLUE
leaderboard: a task with two metrics contributes their unweighted mean, so MRPC / QQP
contribute "acc_and_f1" and STS-B "pearson_and_spearman"; MNLI contributes the mean of
its matched and mismatched accuracy when both are given. Pearson / Spearman of a
constant prediction vector are undefined and returned as ``nan``.
"""
from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .glue import get_task, resolve_task

__all__ = ["compute_metrics", "predictions_from_logits", "headline_metric", "headline_value",
           "glue_average"]

_HEADLINE = {"cola": "mcc", "sst2": "accuracy", "mrpc": "acc_and_f1", "qqp": "acc_and_f1",
             "stsb": "pearson_and_spearman", "mnli": "accuracy", "qnli": "accuracy",
             "rte": "accuracy"}


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def predictions_from_logits(task: str, logits) -> np.ndarray:
    """Class ids (argmax) from ``(n, num_labels)`` logits, or the scores for STS-B."""
    spec = get_task(task)
    logits = _as_numpy(logits)
    if spec.is_regression:
        return logits.reshape(len(logits), -1)[:, 0].astype(np.float64)
    return logits.argmax(axis=-1)


def _correlation(fn, predictions: np.ndarray, labels: np.ndarray) -> float:
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(predictions, labels)[0])


def compute_metrics(task: str, predictions, labels) -> dict[str, float]:
    """Metrics of one task from predictions (class ids, or floats for STS-B) and labels."""
    spec = get_task(task)
    predictions, labels = _as_numpy(predictions), _as_numpy(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be "
                         "1-D of equal length (use predictions_from_logits for logits)")
    if len(labels) == 0:
        raise ValueError("compute_metrics got no examples")
    if spec.is_regression:
        pearson = _correlation(pearsonr, predictions.astype(np.float64), labels.astype(np.float64))
        spearman = _correlation(spearmanr, predictions.astype(np.float64),
                                labels.astype(np.float64))
        return {"pearson": pearson, "spearmanr": spearman,
                "pearson_and_spearman": (pearson + spearman) / 2}
    if spec.name == "cola":
        return {"mcc": float(matthews_corrcoef(labels, predictions))}
    accuracy = float(accuracy_score(labels, predictions))
    if spec.name in ("mrpc", "qqp"):
        f1 = float(f1_score(labels, predictions, pos_label=1, zero_division=0.0))
        return {"accuracy": accuracy, "f1": f1, "acc_and_f1": (accuracy + f1) / 2}
    return {"accuracy": accuracy}


def headline_metric(task: str) -> str:
    """The metric name a task contributes to the GLUE average, e.g. "mcc" for CoLA."""
    return _HEADLINE[get_task(task).name]


def headline_value(task: str, metrics: Mapping[str, float]) -> float:
    """The headline number of a task from its metrics dict."""
    name = headline_metric(task)
    if name not in metrics:
        raise ValueError(f"metrics for {task!r} lack {name!r}; got {sorted(metrics)}")
    return float(metrics[name])


def glue_average(results: Mapping[str, Mapping[str, float]]) -> float:
    """Unweighted mean of the per-task headline values (GLUE-leaderboard style).

    Keys are task names or aliases; "mnli-m" and "mnli-mm" (or "mnli") are averaged into
    one MNLI entry so that MNLI counts once.
    """
    if not results:
        raise ValueError("glue_average got no tasks")
    per_task: dict[str, list[float]] = {}
    for task, metrics in results.items():
        spec, _ = resolve_task(task)
        per_task.setdefault(spec.name, []).append(headline_value(task, metrics))
    scores: Sequence[float] = [sum(v) / len(v) for v in per_task.values()]
    return float(sum(scores) / len(scores))

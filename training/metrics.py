"""Classification metrics shared by training (dev metrics each epoch), export (parity),
``finsent evaluate`` and ``finsent report``. numpy and scikit-learn only: no torch."""

from __future__ import annotations

import numpy as np

from pipeline.classify import softmax
from pipeline.schemas import LABELS


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=False):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def negative_log_likelihood(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    probs = softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, y_true, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature T that minimises the negative log-likelihood of softmax(logits / T) on
    held-out examples (Guo et al. 2017): one number, so labels never change, only confidence.
    Golden-section search on log T (the NLL is unimodal in it); 1.0 without examples."""
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return 1.0
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if negative_log_likelihood(logits, y_true, np.exp(c)) < negative_log_likelihood(logits, y_true, np.exp(d)):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def classification_metrics(y_true, logits: np.ndarray, labels=LABELS) -> dict:
    """Accuracy, macro-F1, per-class figures and confusion matrix; ``labels`` names the classes
    (the sentiment labels, or the topic head's topics)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true)
    probs = softmax(np.asarray(logits, dtype=np.float64))
    y_pred = probs.argmax(axis=1)
    names, labels = list(labels), list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            names[i]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in labels
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "ece": expected_calibration_error(probs, y_true),
        "predictions": y_pred.tolist(),
    }


def accuracy_by_group(y_true, y_pred, groups: list[str | None], order: list[str]) -> dict[str, dict]:
    """Examples and accuracy per group (e.g. annotator agreement) in ``order``; examples whose
    group is None and groups without examples are left out."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    result = {}
    for group in order:
        mask = np.array([g == group for g in groups], dtype=bool)
        if mask.any():
            result[group] = {"n": int(mask.sum()), "accuracy": float((y_true[mask] == y_pred[mask]).mean())}
    return result

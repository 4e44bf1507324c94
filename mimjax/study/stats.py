"""The study's statistics: mean +- std over seeds, the paired difference of two arms with
a t confidence interval, and ROC AUC. NumPy and scipy's t quantile only."""
from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats


def summary(values) -> dict:
    """{"mean", "std" (sample, ddof 1; 0 for one value), "n"} of a list of numbers."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0, "n": int(x.size)}


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """a - b over paired runs (the same seeds): {"mean", "std", "n", "ci": [lo, hi] or None,
    "significant"}: the t interval mean +- t_{n-1} * std / sqrt(n), significant when it
    excludes 0. With fewer than 2 pairs there is no interval (and nothing significant)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    out = summary(d)
    if d.size < 2:
        return {**out, "ci": None, "significant": False}
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * out["std"] / np.sqrt(d.size)
    lo, hi = out["mean"] - half, out["mean"] + half
    return {**out, "ci": [lo, hi], "significant": bool(lo > 0 or hi < 0)}


def roc_auc(scores, labels) -> float:
    """The probability that a positive scores above a negative (ties count half): ROC AUC by
    the Mann-Whitney rank sum. scores, labels [N] (labels bool or 0/1); NaN when one class
    is empty."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = scipy_stats.rankdata(s)  # average ranks for ties, 1-based
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

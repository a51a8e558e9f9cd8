"""How far a model's probabilities can be trusted: expected calibration error and reliability
bins, temperature scaling, and split-conformal prediction sets.

Everything is fitted on the validation part of a split and measured on its test part, so the
test part is never used to choose anything. ECE is torchmetrics' (15 equal-width bins, L1);
the conformal sets are crepes' (hinge non-conformity ``1 - p(class)``, no smoothing, so a set
is a deterministic function of the probabilities). A model's card keeps the record
(:func:`calibration_record`) and :meth:`Conformal.from_card` rebuilds its sets anywhere,
without the data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core.errors import MMXError

BINS = 15
CONFIDENCE = 0.9


def _checked(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    proba, y = np.asarray(proba, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if proba.ndim != 2 or len(proba) != len(y) or len(y) == 0:
        raise MMXError(f"calibration needs N x C probabilities and N labels, got {proba.shape} and {y.shape}")
    if not np.isfinite(proba).all():
        raise MMXError("calibration got probabilities that are NaN or infinite")
    if y.min() < 0 or y.max() >= proba.shape[1]:
        raise MMXError(f"labels must lie in 0..{proba.shape[1] - 1}")
    return proba, y


def ece(proba: np.ndarray, y: np.ndarray, n_bins: int = BINS) -> float:
    """Expected calibration error of the top-class confidence (torchmetrics, L1, equal-width bins)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    proba, y = _checked(proba, y)
    if proba.shape[1] == 1:
        raise MMXError("calibration needs at least two classes")
    return float(multiclass_calibration_error(torch.as_tensor(proba), torch.as_tensor(y), proba.shape[1],
                                              n_bins=n_bins, norm="l1"))


def reliability(proba: np.ndarray, y: np.ndarray, n_bins: int = BINS) -> pd.DataFrame:
    """The reliability diagram's data: per equal-width confidence bin (as torchmetrics bins them),
    the samples in it, their mean top-class confidence and their accuracy (NaN when empty)."""
    proba, y = _checked(proba, y)
    conf, hit = proba.max(1), (proba.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(b, conf, n_bins) / count
        acc = np.bincount(b, hit, n_bins) / count
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "count": count, "confidence": mean_conf,
                         "accuracy": acc})


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of ``softmax(logits / T)``
    (on the validation part); argmax, accuracy and prediction ranks do not change."""
    logits_t = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y_t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if logits_t.ndim != 2 or len(logits_t) != len(y_t) or not torch.isfinite(logits_t).all():
        raise MMXError(f"temperature scaling needs finite N x C logits and N labels, got {tuple(logits_t.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), y_t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature, 1).numpy()


@dataclass(frozen=True)
class Conformal:
    """Split-conformal prediction sets: every class whose hinge score ``1 - p`` is within the
    calibration scores' quantile at ``confidence``. With exchangeable data, the set holds the
    true class with probability at least ``confidence`` (marginally, over samples like the
    calibration ones: a sample with a modality missing or masked is not one of them)."""

    classes: tuple[str, ...]
    confidence: float
    scores: tuple[float, ...]  # the calibration part's hinge scores of the true class

    @classmethod
    def fit(cls, proba: np.ndarray, y: np.ndarray, classes: tuple[str, ...],
            confidence: float = CONFIDENCE) -> Conformal:
        from crepes.extras import hinge

        proba, y = _checked(proba, y)
        if not 0 < confidence < 1:
            raise MMXError(f"conformal confidence must lie in (0, 1), got {confidence}")
        return cls(tuple(classes), float(confidence),
                   tuple(float(s) for s in hinge(proba, np.arange(proba.shape[1]), y)))

    def membership(self, proba: np.ndarray) -> np.ndarray:
        """N x C booleans: class k is in sample n's set."""
        from crepes import ConformalClassifier
        from crepes.extras import hinge

        proba = np.atleast_2d(np.asarray(proba, dtype=np.float64))
        if proba.shape[1] != len(self.classes):
            raise MMXError(f"conformal sets need {len(self.classes)} class probabilities, got {proba.shape[1]}")
        cc = ConformalClassifier().fit(np.asarray(self.scores))
        return cc.predict_set(hinge(proba), confidence=self.confidence, smoothing=False).astype(bool)

    def sets(self, proba: np.ndarray) -> list[tuple[str, ...]]:
        """Each sample's prediction set, classes in decreasing probability."""
        proba = np.atleast_2d(np.asarray(proba, dtype=np.float64))
        member = self.membership(proba)
        return [tuple(self.classes[k] for k in np.argsort(-p, kind="stable") if m[k]) for p, m in zip(proba, member)]

    def evaluate(self, proba: np.ndarray, y: np.ndarray) -> dict:
        """Empirical coverage, mean set size and the share of empty and single-class sets."""
        proba, y = _checked(proba, y)
        member = self.membership(proba)
        size = member.sum(1)
        return {"coverage": float(member[np.arange(len(y)), y].mean()), "mean_set_size": float(size.mean()),
                "empty": float((size == 0).mean()), "singleton": float((size == 1).mean())}

    def to_dict(self) -> dict:
        return {"confidence": self.confidence, "scores": list(self.scores)}

    @classmethod
    def from_card(cls, card: dict | None) -> Conformal | None:
        """The sets a checkpoint card records (None when it records none)."""
        rec = (card or {}).get("calibration", {}).get("conformal")
        if not rec:
            return None
        return cls(tuple(card["classes"]), float(rec["confidence"]), tuple(float(s) for s in rec["scores"]))


def calibration_parts(method, split, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """The rows to calibrate on and the rows to measure on, and what the first are.

    The validation part when the model did not learn from it; a model with a fixed schedule
    trained on it too (its scores there are optimistic, the sets would be too small), so it is
    calibrated on a seeded half of the test part and measured on the other half."""
    from core.train.loop import training_rows

    trained = training_rows(split.train, split.val, getattr(method.config, "train", None))
    if not np.isin(split.val, trained).any():
        return np.asarray(split.val), np.asarray(split.test), "validation part"
    test = np.random.default_rng(seed).permutation(np.asarray(split.test))
    half = len(test) // 2
    what = "half of the test part (the model trained on its validation part)"
    return np.sort(test[:half]), np.sort(test[half:]), what


def calibration_record(method, data, split, confidence: float = CONFIDENCE) -> dict:
    """What a card records: temperature and conformal sets fitted on the calibration rows
    (:func:`calibration_parts`), ECE before and after temperature scaling, and the sets' coverage
    and size, on the measured rows. Samples the method cannot predict are left out."""
    from core.evaluate import predictable

    cal, measured, what = calibration_parts(method, split)
    parts = []
    for name, idx in (("calibration", cal), ("measured", measured)):
        idx, _ = predictable(method, data, idx)
        if len(idx) == 0:
            raise MMXError(f"no {name} samples the model can predict: nothing to calibrate on")
        pred = method.predict(data, idx)
        parts.append((pred.output.logits.double().numpy(), pred.proba, data.y[torch.as_tensor(idx)].numpy()))
    (c_logits, c_proba, c_y), (m_logits, m_proba, m_y) = parts
    temperature = fit_temperature(c_logits, c_y)
    conformal = Conformal.fit(c_proba, c_y, method.classes, confidence)
    return {"calibrated_on": what, "n_calibration": int(len(c_y)), "n_measured": int(len(m_y)), "bins": BINS,
            "ece": ece(m_proba, m_y), "temperature": temperature,
            "ece_scaled": ece(softmax(m_logits, temperature), m_y),
            "conformal": {**conformal.to_dict(), **conformal.evaluate(m_proba, m_y)}}

"""Train / validation / test splits: leave-one-group-out, official, repeated stratified.

Every split carries its own validation set (used for early stopping and model selection),
so no method ever selects on test data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import MMXError


@dataclass(frozen=True)
class Split:
    """Index arrays into a dataset; ``name`` says which fold and seed."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int = 0

    def __post_init__(self) -> None:
        sets = [set(self.train.tolist()), set(self.val.tolist()), set(self.test.tolist())]
        if sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
            raise MMXError(f"split {self.name!r}: train, validation and test overlap")

    def to_dict(self) -> dict:
        return {"name": self.name, "seed": self.seed, "train": self.train.tolist(),
                "val": self.val.tolist(), "test": self.test.tolist()}


def _stratified_holdout(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (keep, held): ``fraction`` of each class held out (at least one
    sample of every class with two or more, so each class is seen on both sides)."""
    rng = np.random.default_rng(seed)
    idx = np.asarray(idx)
    held = []
    for c in np.unique(y[idx]):
        members = rng.permutation(idx[y[idx] == c])
        k = int(round(fraction * len(members)))
        k = min(max(k, 1), len(members) - 1) if len(members) >= 2 else 0
        held.append(members[:k])
    held = np.sort(np.concatenate(held)) if held else np.array([], dtype=int)
    return np.setdiff1d(idx, held), held


def leave_one_group_out(groups: np.ndarray, y: np.ndarray, seeds: tuple[int, ...] = (0, 1, 2),
                        val_fraction: float = 0.2) -> list[Split]:
    """One split per (held-out group, seed); validation is a stratified part of the training groups."""
    uniq = sorted(set(groups.tolist()))
    if len(uniq) < 2:
        raise MMXError(f"leave-one-group-out needs at least 2 groups, found {uniq}")
    out = []
    all_idx = np.arange(len(y))
    for g in uniq:
        test = all_idx[groups == g]
        rest = all_idx[groups != g]
        for s in seeds:
            train, val = _stratified_holdout(rest, y, val_fraction, s)
            out.append(Split(f"test={g}/seed={s}", train, val, test, s))
    return out


def stratified_splits(y: np.ndarray, seeds: tuple[int, ...] = (0, 1, 2), test_fraction: float = 0.3,
                      val_fraction: float = 0.2, prefix: str = "stratified") -> list[Split]:
    """Repeated stratified train/validation/test splits, one per seed."""
    out = []
    for s in seeds:
        rest, test = _stratified_holdout(np.arange(len(y)), y, test_fraction, s)
        train, val = _stratified_holdout(rest, y, val_fraction, s)
        out.append(Split(f"{prefix}/seed={s}", train, val, test, s))
    return out


def fixed_split(name: str, train: np.ndarray, val: np.ndarray, test: np.ndarray,
                seeds: tuple[int, ...] = (0,)) -> list[Split]:
    """An official split, repeated once per seed (the seed drives model initialisation)."""
    return [Split(f"{name}/seed={s}", np.asarray(train), np.asarray(val), np.asarray(test), s) for s in seeds]


def stratified_kfold(idx: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0,
                     prefix: str = "cv") -> list[Split]:
    """``k`` stratified folds of ``idx``, each held out once as the test part; no validation
    set (for fixed-schedule training, where nothing is selected)."""
    idx = np.asarray(idx)
    if k < 2:
        raise MMXError(f"k-fold needs k >= 2, got {k}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(idx), dtype=int)
    for c in np.unique(y[idx]):
        pos = np.flatnonzero(y[idx] == c)
        fold_of[rng.permutation(pos)] = np.arange(len(pos)) % k  # dealt round-robin: sizes differ by at most 1
    empty = np.array([], dtype=int)
    return [Split(f"{prefix}/fold={i}", idx[fold_of != i], empty, idx[fold_of == i], seed) for i in range(k)]


def with_inner_validation(name: str, train: np.ndarray, test: np.ndarray, y: np.ndarray,
                          seeds: tuple[int, ...], val_fraction: float = 0.2) -> list[Split]:
    """A fixed train/test split whose validation set is a seeded, stratified part of train."""
    out = []
    for s in seeds:
        tr, va = _stratified_holdout(np.asarray(train), y, val_fraction, s)
        out.append(Split(f"{name}/seed={s}", tr, va, np.asarray(test), s))
    return out

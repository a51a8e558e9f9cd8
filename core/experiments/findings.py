"""Findings sentences computed from a table's runs. Every comparison of two rows states the
difference with its paired-bootstrap interval over runs and test cases (:mod:`core.stats`) and
calls an effect only when the interval excludes 0, so a finding holds on another CPU, where
image convolutions round differently, or says that it cannot tell."""
from __future__ import annotations

from typing import Mapping

from core import metrics, stats
from core.experiments.runner import RowResult

Table = Mapping[str, RowResult]
CI_NOTE = (f"Differences between rows: mean difference with a {100 * stats.LEVEL:.0f}% paired bootstrap interval "
           f"(runs, then each run's test cases, resampled with replacement; {stats.N_BOOT} replicates); an effect "
           "is called only when the interval excludes 0.")


def mean_std(table: Table, label: str, metric: str) -> str:
    """``85.0 ± 1.2`` for row ``label``."""
    return metrics.fmt(*table[label].summary[metric])


def difference(table: Table, a: str, b: str, metric: str) -> stats.Interval:
    """``metric`` of row ``a`` minus row ``b``, paired over the rows' shared runs and cases."""
    return stats.difference(table[a].runs, table[b].runs, metric)


def verdict(d: stats.Interval, a: str, b: str) -> str:
    """``a above b`` / ``a below b`` when called, else that no difference is called."""
    if not d.called:
        return "no difference called"
    return f"{a} above {b}" if d.estimate > 0 else f"{a} below {b}"


def compare(table: Table, a: str, b: str, claim: str, metric: str) -> str:
    """One bullet: the ``claim`` about ``a`` versus ``b``, both rows' numbers, the difference with
    its interval, and the verdict."""
    d = difference(table, a, b, metric)
    return (f"- {claim}: **{verdict(d, a, b)}**. {metrics.LABELS.get(metric, metric)}: {a} {mean_std(table, a, metric)}"
            f" vs {b} {mean_std(table, b, metric)}; difference {d.text()}.")

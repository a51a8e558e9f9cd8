"""HyperMM against imputation and dummy-input strategies, with modalities missing.

Every scenario removes modalities with :func:`core.data.missing.simulate_missing` (on top of
the data's own absences, e.g. the 9 derm7pt cases without a clinical photo), from training,
validation and test samples alike, drawn again for each seed; within a seed every method sees
the same draw. Rows: HyperMM; unimodal models; late fusion over the observed modalities;
late and early fusion with zero filling; mean imputation; modality-dropout training; MM static
with gray (images) / zero (omics) filling. Columns follow HyperMM's Table 1: accuracy, AUROC
(one-vs-rest macro for more than two classes), F1, precision, recall (weighted), training time.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import metrics, stats
from core.data.missing import missing_fractions, simulate_missing
from core.data.tasks import TaskData, get_task
from core.experiments import command, findings, register_experiment
from core.experiments.findings import CI_NOTE
from core.experiments.runner import SYNTHETIC_BANNER, Row, RowResult, duration, run_rows
from core.models import get_method
from core.train.device import resolve_device
from core.train.results import atomic_write_text, write_json
from core.viz.export import result_formats, save_figure
from core.viz.robustness import robustness_figure

COLUMNS = ("accuracy", "auroc", "f1_weighted", "precision_weighted", "recall_weighted")
HYPERMM = "HyperMM (mean over the observed set)"
HYPERMM_PRETRAINED = "HyperMM, ResNet pretrained (mean over the observed set)"
LATE_OBSERVED = "Late fusion, observed modalities only"
MODALITY_DROPOUT = "Late fusion, modality dropout 0.3, zero filling"
# On the CPU, independent seeds run in CPU_WORKERS processes of CPU_THREADS threads each: small
# convolutions on a shared CPU run several times faster single-threaded than with OpenMP
# threads waiting on each other. Both are recorded in every result file.
CPU_WORKERS, CPU_THREADS = 2, 1
DERM_IMAGE_SIZE = 32
CELLS_IMAGE_SIZE = 32
# every deep model (HyperMM's step 1 included): early stopping on validation balanced accuracy
RHO_EPOCHS = 100  # HyperMM's step 2 on the frozen phi
TRAIN = {"epochs": 40, "patience": 10, "batch_size": 32, "lr": 1e-3, "monitor": "balanced_accuracy", "augment": True}


@dataclass(frozen=True)
class Scenario:
    label: str
    rates: dict  # simulated missing rate per modality
    rate: float = 0.0  # position on the robustness curve


def hypermm_config() -> dict:
    """HyperMM's settings in these tables (and in its shipped checkpoints): step 1 as every deep
    model here, step 2 up to RHO_EPOCHS on the frozen phi, mean over the observed set."""
    rho = {"epochs": RHO_EPOCHS, "patience": 10, **{k: TRAIN[k] for k in ("batch_size", "lr", "monitor")}}
    return {**TRAIN, "aggregation": "mean", "rho_train": rho}


def rows_for(modalities: dict[str, str], target: str | None, skip: tuple[str, ...] = (),
             pretrained: bool = False) -> list[Row]:
    """The compared methods but those labelled in ``skip``; ``modalities`` maps modality name ->
    readable name; ``pretrained`` adds HyperMM with the self-supervised ResNet as phi's image
    backbone (fine-tuned)."""
    deep = dict(TRAIN)
    rows = [Row(HYPERMM, "hypermm", config=hypermm_config(), target=target)]
    if pretrained:
        rows.append(Row(HYPERMM_PRETRAINED, "hypermm", config={**hypermm_config(), "backbone": "pretrained"},
                        target=target))
    rows += [Row(f"Unimodal: {name}", "unimodal", config={"modality": m, "base_config": deep}, target=target)
             for m, name in modalities.items()]
    rows += [
        Row(LATE_OBSERVED, "late_mlp", config=deep, target=target),
        Row("Late fusion, zero filling", "late_mlp", config={**deep, "missing": "zeros"}, target=target),
        Row("Early fusion (LR), zero filling", "early_lr", target=target),
        Row("Late fusion, mean imputation", "late_mlp", config={**deep, "missing": "mean"}, target=target),
        Row(MODALITY_DROPOUT, "late_mlp",
            config={**deep, "missing": "zeros", "modality_dropout": 0.3}, target=target),
        Row("MM static, gray (image) / zero (omics) filling", "mm_static",
            config={**deep, "lr_step": None, "missing": "gray"}, target=target),
    ]
    return [r for r in rows if r.label not in skip]


def _run_seed(task: str, data_dir: str | None, options: dict, rates: dict, rows: list[Row], seed: int,
              device: str) -> tuple[dict, dict[str, list]]:
    """One seed of one scenario (a worker process's job): missingness drawn with ``seed``, then
    every row on the task's splits of that seed."""
    if resolve_device(device).type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    td = get_task(task, data_dir, **options)
    ds = simulate_missing(td.dataset, rates, seed=seed)
    scheme = td.default_split
    part = TaskData(ds, {scheme: [sp for sp in td.splits[scheme] if sp.seed == seed]}, td.description)
    return missing_fractions(ds), {r.row.label: r.runs for r in run_rows(part, rows, scheme, (seed,), device)}


def run_sections(task: str, data_dir: str | None, options: dict, sections: list[tuple[str, list[Scenario], list[Row]]],
                 device: str) -> list[tuple[str, list[dict]]]:
    """Every (section, scenario, seed) as one job, spread over worker processes on the CPU
    (seeds are independent: each job draws its own missingness and trains its own models)."""
    td = get_task(task, data_dir, **options)
    seeds = sorted({sp.seed for sp in td.splits[td.default_split]})
    workers = CPU_WORKERS if resolve_device(device).type == "cpu" else 1
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {(heading, i, seed): pool.submit(_run_seed, task, data_dir, options, sc.rates, rows, seed, device)
                   for heading, scenarios, rows in sections for i, sc in enumerate(scenarios) for seed in seeds}
        try:
            done = {job: f.result() for job, f in futures.items()}
        except BaseException:  # a failed job or Ctrl-C: drop the queued jobs instead of running them all
            pool.shutdown(cancel_futures=True)
            raise
    out = []
    for heading, scenarios, rows in sections:
        results = []
        for i, sc in enumerate(scenarios):
            parts = [done[(heading, i, seed)] for seed in seeds]
            results.append({"scenario": sc, "missing": {seed: p[0] for seed, p in zip(seeds, parts)},
                            "results": [RowResult(r, [run for p in parts for run in p[1][r.label]]) for r in rows]})
        out.append((heading, results))
    return out


def table(results: list[RowResult]) -> str:
    """Metric columns (mean ± std, percent) plus the training time per fit."""
    lines = metrics.markdown_table({r.row.label: r.summary for r in results}, COLUMNS).splitlines()
    times = [metrics.mean_std([run["fit_seconds"] for run in r.runs]) for r in results]
    return "\n".join([lines[0] + " Training time (s) |", lines[1] + " --- |"]
                     + [f"{line} {metrics.fmt(*t, percent=False, digits=-1)} |" for line, t in zip(lines[2:], times)])


def rows_of(res: dict) -> dict[str, RowResult]:
    """A scenario's rows by label."""
    return {r.row.label: r for r in res["results"]}


def score(res: dict, label: str, metric: str = "accuracy") -> tuple[float, float]:
    """Mean and std of ``metric`` for row ``label`` of a scenario result."""
    return rows_of(res)[label].summary[metric]


def scenario_findings(res: dict) -> str:
    """One sentence: where HyperMM ranks and its difference from the best other row."""
    parts = []
    for metric in ("accuracy", "auroc"):
        st = standing(res, metric)
        parts.append(f"{metrics.LABELS[metric]}: HyperMM ranks {st['rank']}/{st['n']} with "
                     f"{metrics.fmt(st['h'], st['hs'])}; the best other row is {st['best']} with "
                     f"{metrics.fmt(st['b'], st['bs'])}; HyperMM minus it: {st['d'].text()}")
    return "; ".join(parts) + "."


def write_report(out_dir: str | Path, td: TaskData, experiment: str, title: str, intro: str,
                 sections: list[tuple[str, list[dict]]], text: str, seconds: float, device: str,
                 extra: dict) -> Path:
    """``<out_dir>/<task>/<table>.json`` (every run's numbers) and ``.md`` (one table per scenario)."""
    ds = td.dataset
    base = Path(out_dir) / ds.name / experiment.split("/")[1]
    cmd = command(experiment, ds.name)
    dev = str(resolve_device(device))
    payload = {
        "title": title, "task": ds.name, "command": cmd, "data_hash": ds.data_hash(), "device": dev,
        "cpu_workers": CPU_WORKERS, "cpu_threads": CPU_THREADS, "torch": torch.__version__,
        "wall_seconds": round(seconds, 1), "written": time.strftime("%Y-%m-%d %H:%M:%S"), **extra,
        "sections": [{"heading": heading, "scenarios": [{
            "label": r["scenario"].label, "rates": r["scenario"].rates, "missing_fractions": r["missing"],
            "rows": [{"label": x.row.label, "row": dataclasses.asdict(x.row), "runs": x.runs,
                      "summary": {k: list(v) for k, v in x.summary.items()}} for x in r["results"]]}
            for r in results]} for heading, results in sections],
    }
    write_json(base.with_suffix(".json"), payload)
    parallel = f"{CPU_WORKERS} worker processes x {CPU_THREADS} thread" if dev == "cpu" else "one process"
    md = [f"# {title}", "", f"Produced by: `{cmd}`", "", *([SYNTHETIC_BANNER, ""] if ds.synthetic else []), intro, "",
          f"Wall time {duration(seconds)} on `{dev}` ({parallel}), data hash `{ds.data_hash()[:16]}`. "
          f"Raw per-run numbers: `{base.name}.json`.", ""]
    for heading, results in sections:
        md += [f"## {heading}", ""]
        for r in results:
            fr = {m: np.mean([f[m] for f in r["missing"].values()]) for m in ds.specs}
            md += [f"### {r['scenario'].label}", "",
                   "Missing (mean over seeds): " + ", ".join(f"{m} {100 * v:.1f} %" for m, v in fr.items())
                   + f". Mean ± std over {len(r['results'][0].runs)} runs, percent ({metrics.STD_NOTE}); best mean "
                   "per column in bold; "
                   "training time in seconds per fit.", "",
                   table(r["results"]), "", scenario_findings(r), ""]
    md += ["## Findings", "", text]
    atomic_write_text(base.with_suffix(".md"), "\n".join(md) + "\n")
    return base.with_suffix(".md")


def _setup(td: TaskData, image_size: int) -> str:
    ds = td.dataset
    backbone = get_method("hypermm", ds.specs, ds.classes).config.backbone
    t = TRAIN
    return (f"Images resized to {image_size} x {image_size}. Deep models (HyperMM's step 1 included): at most "
            f"{t['epochs']} epochs, early stopping after {t['patience']} epochs without a better validation "
            f"{metrics.LABELS[t['monitor']].lower()} (best epoch kept), "
            f"batch {t['batch_size']}, Adam {t['lr']:g}, random flips while training; HyperMM's step 2 (rho) up to "
            f"100 epochs on the frozen phi, patience 10. HyperMM backbone: `{backbone}` (ImageNet VGG11 weights are "
            "used only when already in the torchvision cache). Missing modalities are removed from training, "
            "validation and test samples alike, drawn anew for each seed (a sample always keeps one modality); "
            "within a seed every method sees the same draw. Unimodal rows train on the samples that have their "
            "modality and give the training class frequencies to test samples that lack it.")


DERM_NAMES = {"derm": "dermoscopic", "clinic": "clinical"}
# rows left out on derm7pt to stay within 20 minutes on a shared 2-core CPU (both run on cells)
DERM_SKIP = (LATE_OBSERVED,)
DERM_MELANOMA_SKIP = (LATE_OBSERVED, MODALITY_DROPOUT, "Unimodal: clinical")
DERM_SCENARIOS = [Scenario("Complete data (real missingness: 9 cases lack a clinical photo)", {}),
                  Scenario("100 % dermoscopic + 50 % clinical", {"clinic": 0.5}, 0.5),
                  Scenario("100 % clinical + 50 % dermoscopic", {"derm": 0.5}, 0.5)]


@register_experiment("derm7pt/hypermm", "HyperMM vs imputation / dummy inputs on derm7pt: complete data, 50 % "
                                        "clinical or dermoscopic missing; diagnosis and melanoma vs rest")
def derm7pt(out_dir="results", device="auto", data_dir=None, progress=False, task="derm7pt") -> list[Path]:
    t0 = time.perf_counter()
    options = {"image_size": DERM_IMAGE_SIZE}
    td = get_task(task, data_dir, **options)
    sections = run_sections(task, data_dir, options, [
        ("Diagnosis (NEV, MEL, MISC, SK, BCC)", DERM_SCENARIOS, rows_for(DERM_NAMES, None, DERM_SKIP, True)),
        ("Melanoma vs rest", DERM_SCENARIOS, rows_for(DERM_NAMES, "melanoma", DERM_MELANOMA_SKIP, True)),
    ], device)
    seconds = time.perf_counter() - t0
    majority = {heading: majority_rate(td, target) for heading, target in
                (("Diagnosis (NEV, MEL, MISC, SK, BCC)", None), ("Melanoma vs rest", "melanoma"))}
    intro = (_setup(td, DERM_IMAGE_SIZE) + " \"100 % clinical\" means every case that has a clinical photo "
             "(1002 of 1011); the dermoscopic image is kept for the 9 that have none. To stay near 20 minutes "
             f"on this 2-core CPU, derm7pt leaves out {', '.join(DERM_SKIP)} (both tasks) and "
             f"{', '.join(DERM_MELANOMA_SKIP[1:])} (melanoma); the cells experiment runs every row.")
    path = write_report(out_dir, td, "derm7pt/hypermm", "HyperMM on derm7pt: learning with missing modalities", intro,
                        sections, derm_findings(sections, seconds, majority), seconds, device,
                        {"image_size": DERM_IMAGE_SIZE, "train": TRAIN})
    return [path, path.with_suffix(".json")]


def standing(res: dict, metric: str) -> dict:
    """HyperMM's rank in a scenario, the best other row (by mean), HyperMM's paired difference from
    it, and whether it holds its own: no other row is called better (what "holds" means below)."""
    labels = [x.row.label for x in res["results"] if x.row.label != HYPERMM_PRETRAINED]  # a HyperMM, not a rival
    order = sorted(labels, key=lambda lab: -score(res, lab, metric)[0])
    best = order[0] if order[0] != HYPERMM else order[1]
    (h, hs), (b, bs) = score(res, HYPERMM, metric), score(res, best, metric)
    d = findings.difference(rows_of(res), HYPERMM, best, metric)
    return {"rank": order.index(HYPERMM) + 1, "n": len(labels), "best": best, "h": h, "hs": hs, "b": b, "bs": bs,
            "d": d, "holds": not (d.called and d.estimate < 0)}


def verdict(holds: bool, where: str) -> str:
    if holds:
        return (f"HyperMM's claimed robustness holds here: {where} no row is called better than HyperMM (paired "
                "bootstrap interval of the difference from the best other row includes 0 or favours HyperMM), by "
                "accuracy and by AUROC.")
    return (f"HyperMM's claimed robustness does not hold here: {where} another row is called better than HyperMM "
            "(its paired bootstrap interval excludes 0) by accuracy or by AUROC.")


def majority_rate(td: TaskData, target: str | None) -> tuple[str, float]:
    """The most common class of the (official) test part and the accuracy of always answering it."""
    ds = td.dataset.with_target(target)
    y = ds.y[torch.as_tensor(td.splits[td.default_split][0].test)].numpy()
    counts = np.bincount(y, minlength=ds.n_classes)
    return ds.classes[int(counts.argmax())], float(counts.max() / counts.sum())


def majority_note(results: list[dict], majority: tuple[str, float]) -> str:
    """Say what always answering the common class scores, and which rows are that close to it
    on complete data (their accuracy lead says little; AUROC tells them apart)."""
    cls, share = majority
    complete = results[0]
    near = [x.row.label for x in complete["results"] if score(complete, x.row.label)[0] >= share - 0.02]
    text = f"Always answering {cls} scores {100 * share:.1f} % accuracy on this test set"
    if not near:
        return text + "."
    return (text + f"; on complete data {', '.join(near)} reach{'es' if len(near) == 1 else ''} within 2 points of "
            "that or above it, so accuracy alone rewards leaning on the common class: compare AUROC.")


def derm_findings(sections: list[tuple[str, list[dict]]], seconds: float,
                  majority: dict[str, tuple[str, float]]) -> str:
    out = [CI_NOTE]
    for heading, results in sections:
        parts, holds = [], True
        for r in results[1:]:  # the two scenarios with simulated missingness
            st = {m: standing(r, m) for m in ("accuracy", "auroc")}
            holds &= all(x["holds"] for x in st.values())
            parts.append(f"with {r['scenario'].label.lower()} HyperMM ranks {st['accuracy']['rank']}/"
                         f"{st['accuracy']['n']} by accuracy ({100 * st['accuracy']['h']:.1f} vs "
                         f"{100 * st['accuracy']['b']:.1f} for {st['accuracy']['best']}; difference "
                         f"{st['accuracy']['d'].text()}) and {st['auroc']['rank']}/{st['auroc']['n']} by AUROC "
                         f"({100 * st['auroc']['h']:.1f} vs {100 * st['auroc']['b']:.1f} for {st['auroc']['best']}; "
                         f"difference {st['auroc']['d'].text()})")
        backbone = [f"{r['scenario'].label.lower()}: "
                    f"{findings.difference(rows_of(r), HYPERMM_PRETRAINED, HYPERMM, 'accuracy').text()} accuracy, "
                    f"{findings.difference(rows_of(r), HYPERMM_PRETRAINED, HYPERMM, 'auroc').text()} AUROC"
                    for r in results if HYPERMM_PRETRAINED in rows_of(r)]
        change = [missing_cost(results[0], r, [HYPERMM]) for r in results[1:]]
        text = "; ".join(parts)
        out.append(f"**{heading}.** {text[0].upper()}{text[1:]}. Against complete data, HyperMM's accuracy "
                   f"changes by {change[0].text()} (50 % clinical missing) and {change[1].text()} (50 % "
                   "dermoscopic missing). " + verdict(holds, "with half of one modality missing") + " "
                   + majority_note(results, majority[heading])
                   + (f" {HYPERMM_PRETRAINED} (phi's image backbone: the self-supervised ResNet, fine-tuned) minus "
                      f"HyperMM, {'; '.join(backbone)}." if backbone else ""))
    out.append(f"Total wall time of this experiment: {duration(seconds)}.")
    return "\n\n".join(out)


def missing_cost(complete: dict, missing: dict, labels: list[str], minus: list[str] = (),
                 metric: str = "accuracy") -> stats.Interval:
    """Change of ``metric`` from the ``complete`` scenario to the ``missing`` one, averaged over the
    rows ``labels``, minus the same for the rows ``minus`` (if any); paired: the scenarios share
    splits and test cases, only the missingness differs."""
    runs = {f"{k}@{lab}": rows_of(res)[lab].runs for k, res in (("c", complete), ("m", missing))
            for lab in [*labels, *minus]}

    def change(m, rows):
        return np.mean([m[f"m@{lab}"] - m[f"c@{lab}"] for lab in rows], axis=0)

    return stats.bootstrap(runs, metric, lambda m: change(m, labels) - (change(m, minus) if minus else 0))


CELLS_NAMES = {"rna": "RNA", "protein": "protein", "image": "image"}
CELLS_RATES = (0.0, 0.25, 0.5, 0.75)


@register_experiment("cells/hypermm", "HyperMM vs imputation / dummy inputs on cells: RNA, protein and image each "
                                      "0/25/50/75 % missing; robustness curve")
def cells(out_dir="results", device="auto", data_dir=None, progress=False, task="cells") -> list[Path]:
    t0 = time.perf_counter()
    options = {"image_size": CELLS_IMAGE_SIZE}
    td = get_task(task, data_dir, **options)
    scenarios = [Scenario(f"RNA, protein and image each {int(100 * r)} % missing", {m: r for m in CELLS_NAMES}, r)
                 for r in CELLS_RATES]
    sections = run_sections(task, data_dir, options,
                            [("Leave-one-donor-out, 6 lineages", scenarios, rows_for(CELLS_NAMES, None))], device)
    seconds = time.perf_counter() - t0
    results = sections[0][1]
    curves = {metrics.LABELS[m] + (" (one-vs-rest)" if m == "auroc" else ""): {
        x.row.label: [(r["scenario"].rate, *score(r, x.row.label, m)) for r in results]
        for x in results[0]["results"]} for m in ("accuracy", "auroc")}
    fig = robustness_figure(curves, f"{task}: robustness to missing modalities (mean ± std over "
                                    f"{len(results[0]['results'][0].runs)} runs)",
                            highlight=HYPERMM)
    figures = save_figure(fig, Path(out_dir) / td.dataset.name / "hypermm_robustness", result_formats())
    intro = (_setup(td, CELLS_IMAGE_SIZE) + " Each modality of each cell is dropped with the stated probability; a "
             "cell left with none keeps one of its modalities at random, so the realised missing fractions (listed "
             "per table) are below the nominal rate at 50 and 75 %. Robustness curve: `hypermm_robustness.png` "
             "and `.svg`.")
    path = write_report(out_dir, td, "cells/hypermm", "HyperMM on cells: learning with missing modalities", intro,
                        sections, cells_findings(results, seconds), seconds, device,
                        {"image_size": CELLS_IMAGE_SIZE, "train": TRAIN, "figures": [str(f) for f in figures]})
    return [path, path.with_suffix(".json"), *figures]


def cells_findings(results: list[dict], seconds: float) -> str:
    first, last = results[0], results[-1]
    labels = [x.row.label for x in first["results"]]
    filling = [lab for lab in labels if "filling" in lab or "imputation" in lab]
    parts = [CI_NOTE]
    for metric in ("accuracy", "auroc"):
        drop = {lab: 100 * (score(first, lab, metric)[0] - score(last, lab, metric)[0]) for lab in labels}
        st = standing(last, metric)
        own = missing_cost(first, last, [HYPERMM], metric=metric)
        rel = missing_cost(first, last, [HYPERMM], filling, metric)
        parts.append(f"{metrics.LABELS[metric]}: from 0 to 75 % nominal missingness HyperMM changes by {own.text()} "
                     f"({100 * score(first, HYPERMM, metric)[0]:.1f} -> {metrics.fmt(st['h'], st['hs'])}); the "
                     f"imputation / dummy-input rows lose {np.mean([drop[lab] for lab in filling]):.1f} on average "
                     f"({min(drop[lab] for lab in filling):.1f} to {max(drop[lab] for lab in filling):.1f}). HyperMM's "
                     f"change minus theirs: {rel.text()}, **{'called' if rel.called else 'not called'}**. "
                     f"At 75 % HyperMM ranks {st['rank']}/{st['n']}; the best other row is {st['best']} with "
                     f"{metrics.fmt(st['b'], st['bs'])}; HyperMM minus it: {st['d'].text()}.")
    holds = all(standing(last, m)["holds"] for m in ("accuracy", "auroc"))
    return ("\n\n".join(parts) + "\n\n" + verdict(holds, "at the highest missing rate")
            + f"\n\nTotal wall time: {duration(seconds)}.")

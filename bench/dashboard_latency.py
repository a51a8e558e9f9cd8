"""Latency of the dashboard's live interactions, measured on the library (no browser, no Streamlit
server): what a user waits for after a click, on this machine's CPU.

1. Mask toggle -> new prediction + patch map. Per shipped model, ``--n`` seeded random toggles
   (a modality switched off with a random mode, 1-20 random image patches masked, or both) on
   random test samples. Timed: ``live_predict`` with the sample's unmasked result given (the app
   caches it per sample; computed outside the timing) + building the probability figure and one
   patch map per image modality. Reported apart: ``plotly.io.to_json`` of those figures, which
   ``st.plotly_chart`` does on every rerun. ``--warmup`` toggles first, not timed. Goal: p95 <= 150 ms.
   Then, per sample (``--curves`` random test samples): the patch-ablation curve of the first image
   modality (17 masked variants, the unmasked result given, as the informativeness page asks it) and
   ``live_predict`` with nothing cached (unmasked + masked, as the report asks it).
2. Cold start: a new interpreter runs ``AppTest.from_file("dashboard/Home.py").run()``; timed from
   just before spawning it to its exit, ``--cold-repeats`` times (also the same process without
   ``.run()``, and one that only imports the page's modules, to show what is import time). Then as a
   user sees it: ``streamlit run`` started and the Home page opened in chromium (already running),
   timed until the page is drawn (title and text) and until it is complete (tables, chart). Goal <= 5 s.
   Then "What would change it" (Explainers page), per sample (``--counterfactuals`` random test
   samples), each of the page's two questions as the page asks it: the minimal flip sets (its
   default), then the minimal keep sets (when the user switches), grown in the order of each default
   explainer (learned map, IG, Occlusion, GradientSHAP) and a random order, pruned, verified, and
   over whole modalities, mean fill, half the units at most; timed with one torch thread and with the
   dashboard's (torch's default: every core), whatever ``--threads`` says. The sample's explanations
   are given (the page has already computed them, cached, for the maps above the section); their time
   is reported apart. Goal: p95 of each answer <= 1 s with the dashboard's threads.
3. One-off (cached per model or per click in the app): ``masking_effects`` and ``cohort_explain``
   over the test split, and ``sample_report`` (the "Download report" zip) of one sample.

    python bench/dashboard_latency.py [--models cells/mm_dynamics,derm7pt/mm_dynamics,pbc/cnn] [--n 200]
                                      [--threads 1] [--warmup 10] [--curves 30] [--counterfactuals 30]
                                      [--seed 0]
                                      [--cold-repeats 3]
                                      [--skip-cold] [--skip-oneoff] [--out results/bench/dashboard.md]

Prints the tables and writes them, with the machine, date and command, to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import plotly.io as pio  # noqa: E402
import torch  # noqa: E402

from core.errors import MMXError  # noqa: E402
from core.explain.attributions import EXPLAINERS, differentiable  # noqa: E402
from core.explain.cohort import cohort_explain, masking_effects  # noqa: E402
from core.explain.counterfactual import KINDS, counterfactuals  # noqa: E402
from core.explain.faithfulness import LEARNED, explanations  # noqa: E402
from core.explain.live import (  # noqa: E402
    ABSENT,
    Masking,
    live_predict,
    off_modes,
    patch_ablation,
    patch_grid,
    patch_size,
)
from core.explain.sample import Cohort, Sample, heldout_cohort  # noqa: E402
from core.models.base import Method  # noqa: E402
from core.shipped import load  # noqa: E402
from core.viz.explain import patch_map_figure, probability_figure  # noqa: E402
from core.report import sample_report  # noqa: E402

GOAL_LIVE_MS = 150.0
GOAL_COLD_S = 5.0
GOAL_COUNTERFACTUAL_S = 1.0
DASHBOARD_THREADS = torch.get_num_threads()  # what a dashboard process gets: torch's default, every core
APP = ("from streamlit.testing.v1 import AppTest; "
       "at = AppTest.from_file('dashboard/Home.py', default_timeout=120)")
PAGE_IMPORTS = ("import streamlit, plotly.graph_objects, torch, pandas, core.data.tasks, core.shipped, "
                "core.explain.live, core.explain.cohort, core.viz.explain, core.report")
COLD = {"import + from_file": APP,
        "full (.run())": APP + ".run(); assert not at.exception, at.exception",
        "pages' imports only": PAGE_IMPORTS}


def random_masking(rng: np.random.Generator, m: Method, s: Sample) -> tuple[str, Masking]:
    """A seeded random toggle the page allows: one modality off, patches of one image, or both."""
    images = [mod for mod in m.predicts_from() if m.specs[mod].kind == "image" and mod in s.present]
    kind = str(rng.choice(["off", "patches", "mix"] if images else ["off"]))
    patches: dict[str, tuple[int, ...]] = {}
    if kind != "off":
        mod = str(rng.choice(images))
        rows, cols = patch_grid(m, mod)
        k = int(rng.integers(1, 21))
        patches = {mod: tuple(sorted(rng.choice(rows * cols, k, replace=False).tolist()))}
    off: dict[str, str] = {}
    candidates = [mod for mod in m.predicts_from() if mod not in patches]
    if kind != "patches" and candidates:
        mod = str(rng.choice(candidates))
        others = [o for o in m.predicts_from() if o != mod and o in s.present]
        modes = [x for x in off_modes(m, mod) if x != ABSENT or (others and mod not in m.required_modalities())]
        off = {mod: str(rng.choice(modes))}
    kind = "mix" if off and patches else ("off" if off else "patches")
    return kind, Masking(off=off, patches=patches)


def interaction(m: Method, s: Sample, base, masking: Masking) -> tuple[float, float, float]:
    """One toggle as the page answers it: seconds for live_predict, figures, JSON of the figures."""
    t0 = time.perf_counter()
    live = live_predict(m, s, masking, unmasked=base)
    t1 = time.perf_counter()
    figs = [probability_figure(live.unmasked.classes, live.unmasked.proba[0], live.masked.proba[0])]
    for mod, spec in m.specs.items():
        if spec.kind == "image" and mod in s.present:
            grid = live.masked.patch_maps[mod][0] if mod in live.masked.patch_maps else None
            figs.append(patch_map_figure(s.image(mod), grid, patch_size(m), selected=masking.patches.get(mod, ())))
    t2 = time.perf_counter()
    for f in figs:
        pio.to_json(f, validate=False)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def time_live(m: Method, cohort: Cohort, n: int, warmup: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    bases: dict[int, object] = {}
    samples: dict[int, Sample] = {}
    rows = []
    for i in range(warmup + n):
        pos = int(rng.integers(len(cohort.idx)))
        if pos not in samples:  # the app's per-sample cache: outside the timing
            samples[pos] = cohort.sample(pos)
            bases[pos] = live_predict(m, samples[pos]).unmasked
        kind, masking = random_masking(rng, m, samples[pos])
        pred, fig, js = interaction(m, samples[pos], bases[pos], masking)
        if i >= warmup:
            rows.append((kind, pred, fig, js))
    ms = lambda col: 1000 * np.array([r[col] for r in rows])  # noqa: E731
    pred, fig, js = ms(1), ms(2), ms(3)
    total = pred + fig
    kinds = np.array([r[0] for r in rows])
    return {"total": total, "with_json": total + js, "predict": pred, "figures": fig, "json": js,
            "by_kind": {k: total[kinds == k] for k in ("off", "patches", "mix") if (kinds == k).any()},
            "samples": len(samples)}


def time_curves(m: Method, cohort: Cohort, n: int, seed: int) -> dict[str, np.ndarray] | None:
    """Ms per sample of the patch-ablation curve (unmasked result given) and of ``live_predict``
    with nothing cached; None for a model without an image modality."""
    images = [mod for mod in m.predicts_from() if m.specs[mod].kind == "image"]
    if not images:
        return None
    rng = np.random.default_rng(seed)
    curve, both = [], []
    for pos in rng.choice(len(cohort.idx), min(n, len(cohort.idx)), replace=False):
        s = cohort.sample(int(pos))
        base = live_predict(m, s).unmasked
        order = "most" if images[0] in base.patch_maps else "random"
        masking = Masking(patches={images[0]: tuple(range(int(rng.integers(1, 21))))})
        t0 = time.perf_counter()
        patch_ablation(m, s, images[0], order, unmasked=base)
        t1 = time.perf_counter()
        live_predict(m, s, masking)
        curve.append(t1 - t0)
        both.append(time.perf_counter() - t1)
    return {"curve": 1000 * np.array(curve), "both": 1000 * np.array(both)}


def time_counterfactuals(m: Method, cohort: Cohort, n: int, seed: int) -> dict[str, np.ndarray] | None:
    """Ms per sample of the explanations the page shows (computed once, cached) and of each of the
    page's answers given them (flip, keep), with one torch thread and with the dashboard's
    (``flip@1``, ``flip@<threads>``, ...); None for a model captum cannot explain."""
    try:
        differentiable(m)
    except MMXError:
        return None
    base = live_predict(m, cohort.sample(0)).unmasked
    names = ((LEARNED,) if base.feature_scores or base.patch_maps else ()) + tuple(
        e for e in EXPLAINERS if e != "feature_ablation")
    rng = np.random.default_rng(seed)
    threads = sorted({1, DASHBOARD_THREADS})
    before = torch.get_num_threads()
    out = {"explanations": [], **{f"{k}@{t}": [] for k in KINDS for t in threads}}
    try:
        for pos in rng.choice(len(cohort.idx), min(n, len(cohort.idx)), replace=False):
            s = cohort.sample(int(pos))
            t0 = time.perf_counter()
            explained = explanations(m, s.data, None, names)[0]
            out["explanations"].append(time.perf_counter() - t0)
            for t in threads:
                torch.set_num_threads(t)
                for kind in KINDS:
                    t0 = time.perf_counter()
                    counterfactuals(m, s.data, 0, explained, kinds=(kind,))
                    out[f"{kind}@{t}"].append(time.perf_counter() - t0)
            torch.set_num_threads(before)
    finally:
        torch.set_num_threads(before)
    return {k: 1000 * np.array(v) for k, v in out.items()}


def stats(v: np.ndarray) -> str:
    return f"{np.percentile(v, 50):8.1f} {np.percentile(v, 95):8.1f} {v.mean():8.1f}"


def cold_start(repeats: int) -> list[str]:
    """Seconds from spawn to exit of a new interpreter for each snippet in COLD, or the error."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    lines = [f"{'variant':<22} " + " ".join(f"{'run ' + str(i + 1):>7}" for i in range(repeats)) + f" {'median':>7}"]
    for name, code in COLD.items():
        secs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
            secs.append(time.perf_counter() - t0)
            if out.returncode:
                err = (out.stderr.strip().splitlines() or ["(no stderr)"])[-1]
                lines.append(f"{name:<22} FAILED (exit {out.returncode}): {err}")
                break
        else:
            med = float(np.median(secs))
            lines.append(f"{name:<22} " + " ".join(f"{s:7.2f}" for s in secs) + f" {med:7.2f}")
    return lines


def browser_cold_start(repeats: int) -> list[str]:
    """Seconds from ``streamlit run`` to the Home page in a browser already open, as a user starting
    the app sees it: first drawn (title and text) and complete (tables and chart); or why not run."""
    import socket
    import urllib.request

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return ["browser cold start: skipped (the playwright package is missing)"]
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(exe, os.X_OK):
        return ["browser cold start: skipped (no chromium: bash setup.sh --test installs it)"]
    first, full = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            for _ in range(repeats):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
                t0 = time.perf_counter()
                proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/Home.py",
                                         "--server.headless", "true", "--server.port", str(port)],
                                        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    while True:
                        try:
                            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read():
                                break
                        except OSError:
                            time.sleep(0.05)
                    page = browser.new_page()
                    page.goto(f"http://127.0.0.1:{port}")
                    page.get_by_role("heading", name="Explainable multimodal classification").wait_for(timeout=120_000)
                    first.append(time.perf_counter() - t0)
                    page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
                    page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=120_000)
                    full.append(time.perf_counter() - t0)
                    page.close()
                finally:
                    proc.terminate()
                    proc.wait(15)
        finally:
            browser.close()
    out = []
    for name, secs in (("browser: Home drawn", first), ("browser: Home complete", full)):
        out.append(f"{name:<22} " + " ".join(f"{x:7.2f}" for x in secs) + f" {float(np.median(secs)):7.2f}")
    a, b = float(np.median(first)), float(np.median(full))
    out.append(f"cold start as a user sees it, from `streamlit run`: the Home page is drawn after {a:.2f} s (goal <= "
               f"{GOAL_COLD_S:.0f} s {'met' if a <= GOAL_COLD_S else 'NOT met'}), complete with its tables and chart "
               f"after {b:.2f} s ({'met' if b <= GOAL_COLD_S else 'NOT met'})")
    return out


def one_off(m: Method, cohort: Cohort, s: Sample) -> str:
    """Seconds of the per-model cached computations and of the report zip of one sample."""
    t0 = time.perf_counter()
    masking_effects(m, cohort)
    t1 = time.perf_counter()
    cohort_explain(m, cohort)
    t2 = time.perf_counter()
    size = len(sample_report(m, s))
    t3 = time.perf_counter()
    return f"{t1 - t0:17.2f} {t2 - t1:16.2f} {t3 - t2:16.2f} {size / 1e6:10.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cells/mm_dynamics,derm7pt/mm_dynamics,pbc/cnn", help="task/name,...")
    ap.add_argument("--n", type=int, default=200, help="timed toggles per model")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--curves", type=int, default=30, help="samples timed for the patch-ablation curve")
    ap.add_argument("--counterfactuals", type=int, default=30,
                    help="samples timed for the counterfactual search (What would change it)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cold-repeats", type=int, default=3)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-oneoff", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "dashboard.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        report.append(line)

    load_before = os.getloadavg()
    say(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op threads, Python {platform.python_version()}")
    say(f"load average (1, 5, 15 min) at start: {', '.join(f'{x:.2f}' for x in load_before)} "
        f"(above {os.cpu_count()}: other processes competed for the CPUs, the times are then upper bounds)")
    say()
    say(f"1. mask toggle -> new prediction + figures, server side on CPU: {args.n} toggles per model after "
        f"{args.warmup} warm-up, ms")
    say(f"{'model':<22} {'p50':>8} {'p95':>8} {'mean':>8} | {'predict p50':>11} {'figures p50':>11} "
        f"{'+JSON p95':>9} {'samples':>7}")
    models, verdicts, kinds, curves, searches = {}, [], [], [], []
    for key in args.models.split(","):
        task, name = key.split("/")
        try:
            m = load(task, name)
        except MMXError as e:
            say(f"{key:<22} skipped: {e}")
            continue
        cohort = heldout_cohort(m)
        models[key] = (m, cohort)
        r = time_live(m, cohort, args.n, args.warmup, args.seed)
        p95 = float(np.percentile(r["total"], 95))
        say(f"{key:<22} {stats(r['total'])} | {np.percentile(r['predict'], 50):11.1f} "
            f"{np.percentile(r['figures'], 50):11.1f} {np.percentile(r['with_json'], 95):9.1f} {r['samples']:7d}")
        verdicts.append(f"{key}: p95 {p95:.1f} ms, goal <= {GOAL_LIVE_MS:.0f} ms "
                        f"{'met' if p95 <= GOAL_LIVE_MS else 'NOT met'}")
        kinds += [f"{key:<22} {k:<8} {len(v):5d} {stats(v)}" for k, v in r["by_kind"].items()]
        c = time_curves(m, cohort, args.curves, args.seed)
        if c is not None:
            curves += [f"{key:<22} {'patch-ablation curve':<28} {len(c['curve']):5d} {stats(c['curve'])}",
                       f"{key:<22} {'live_predict, none cached':<28} {len(c['both']):5d} {stats(c['both'])}"]
        cf = time_counterfactuals(m, cohort, args.counterfactuals, args.seed)
        if cf is not None:
            searches.append(f"{key:<22} {'explanations (cached)':<24} {len(cf['explanations']):5d} "
                            f"{stats(cf['explanations'])}")
            timed = [k for k in cf if "@" in k]
            for k in timed:
                kind, t = k.split("@")
                call = f"{kind} sets, {t} thread{'s' * (t != '1')}"
                searches.append(f"{key:<22} {call:<24} {len(cf[k]):5d} {stats(cf[k])}")
            for k in timed:
                kind, t = k.split("@")
                p95 = float(np.percentile(cf[k], 95)) / 1000
                searches.append(f"{key}: {kind} answer with {t} torch thread{'s' * (t != '1')} p95 {p95:.2f} s, goal "
                                f"<= {GOAL_COUNTERFACTUAL_S:.0f} s {'met' if p95 <= GOAL_COUNTERFACTUAL_S else 'NOT met'}"
                                + (" (the dashboard's setting)" if int(t) == DASHBOARD_THREADS else ""))
    say()
    for v in verdicts:
        say(v)
    say()
    say("by kind of toggle (live_predict + figures), ms")
    say(f"{'model':<22} {'toggle':<8} {'count':>5} {'p50':>8} {'p95':>8} {'mean':>8}")
    for line in kinds:
        say(line)
    say()
    say("per sample: patch-ablation curve (17 masked variants, unmasked given) and live_predict with nothing "
        "cached (unmasked + masked), ms")
    say(f"{'model':<22} {'call':<28} {'count':>5} {'p50':>8} {'p95':>8} {'mean':>8}")
    for line in curves:
        say(line)
    say()
    say("per sample: What would change it (minimal flip sets, then minimal keep sets, as the page asks them: every "
        "default explainer + random, and whole modalities), ms")
    say(f"{'model':<22} {'call':<24} {'count':>5} {'p50':>8} {'p95':>8} {'mean':>8}")
    for line in searches:
        say(line)
    say(f"load average after part 1: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")

    if not args.skip_cold:
        say()
        say(f"2. cold start of dashboard/Home.py in a new interpreter (AppTest), seconds, {args.cold_repeats} runs")
        for line in cold_start(args.cold_repeats) + browser_cold_start(args.cold_repeats):
            say(line)

    if not args.skip_oneoff:
        say()
        say("3. one-off computations (cached in the app), seconds, one run each")
        say(f"{'model':<22} {'masking_effects':>17} {'cohort_explain':>16} {'sample_report':>16} {'zip MB':>10}")
        for key, (m, cohort) in models.items():
            say(f"{key:<22} {one_off(m, cohort, cohort.sample(0))}")

    say()
    say(f"load average (1, 5, 15 min) at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    md = ["# Dashboard latency", "", f"Measured {date} by `bench/dashboard_latency.py`:", "",
          f"    {command}", "", "```", *report, "```", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(md))
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

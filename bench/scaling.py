"""How training time and peak memory grow with the number of cells, for ``mm_dynamics`` and ``hypermm``.

The real ``cells`` task (RNA + protein + image) is resampled to each size: every cell is drawn
equally often, its expression jittered by multiplicative log-normal noise and its image flipped
and/or turned by a multiple of 90 degrees. The resampled images are written chunk by chunk into
one preallocated uint8 tensor, so building the data holds one copy of them.

Each (method, size) trains in a fresh process, so its peak resident memory is its own: a fixed
number of epochs for every training stage, a fixed batch size, no early stopping, on the first
leave-one-donor-out split. Time per sample-epoch (fit seconds / (epochs x training rows)) is
compared across sizes: a ratio near 1 to the smallest size means linear growth. Memory is
compared with the bytes of the image tensor: peak growth above the process's size before the
data was built, less the omics bytes, in units of the image bytes (1 = one copy of the images).

    python bench/scaling.py [--sizes 600,6000,60000] [--methods mm_dynamics,hypermm] [--epochs 1]
                            [--batch-size 64] [--budget 420] [--out results/bench/scaling.md]

A size whose fit is estimated (from the largest size measured so far) to take longer than
``--budget`` seconds is capped to the size that fits, and the table says so.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import _common as common  # noqa: E402
from core.data.dataset import MultimodalDataset  # noqa: E402
from core.data.splits import leave_one_group_out  # noqa: E402
from core.train.results import atomic_write_text  # noqa: E402

CHUNK = 2048  # rows resampled at a time: bounds the temporaries to a few MB per modality


def resample(data: MultimodalDataset, n: int, seed: int = 0, sigma: float = 0.1) -> MultimodalDataset:
    """``n`` samples drawn from ``data`` (each source sample equally often, in shuffled order), omics
    jittered by ``exp(N(0, sigma^2))`` factors, images randomly flipped and turned by 90-degree steps
    (only 180 when not square). Groups and labels are the source sample's; ids get a copy suffix."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    m = len(data)
    idx = np.concatenate([rng.permutation(m) for _ in range(-(-n // m))])[:n]
    modalities = {}
    for name, x in data.modalities.items():
        out = torch.empty((n, *x.shape[1:]), dtype=x.dtype)
        square = x.ndim == 4 and x.shape[-1] == x.shape[-2]
        for s in range(0, n, CHUNK):
            block = x[torch.as_tensor(idx[s:s + CHUNK])]
            if data.specs[name].kind == "omics":
                block.mul_(torch.randn(block.shape, generator=gen).mul_(sigma).exp_())
            else:
                _turn_and_flip(block, gen, square)
            out[s:s + len(block)] = block
        modalities[name] = out
    i = torch.as_tensor(idx)
    return MultimodalDataset(
        name=f"{data.name}_resampled_{n}", modalities=modalities,
        present={k: p[i] for k, p in data.present.items()}, y=data.y[i], classes=data.classes,
        groups=data.groups[idx], ids=np.array([f"{data.ids[k]}~{j}" for j, k in enumerate(idx)]),
        specs=dict(data.specs), synthetic=True)


def _turn_and_flip(block: torch.Tensor, gen: torch.Generator, square: bool) -> None:
    """In place: each image turned by k x 90 degrees (k even unless square), then maybe mirrored."""
    turns = torch.randint(0, 4, (len(block),), generator=gen)
    if not square:
        turns = turns // 2 * 2
    mirror = torch.rand(len(block), generator=gen) < 0.5
    for k in range(4):
        for flip in (False, True):
            rows = torch.nonzero((turns == k) & (mirror == flip)).flatten()
            if len(rows) and (k or flip):
                v = torch.rot90(block[rows], k, dims=(-2, -1))
                block[rows] = v.flip(-1) if flip else v


def worker(method: str, n: int, epochs: int, batch_size: int, device: str) -> dict:
    """One (method, size) measurement in this process: build, fit, and the memory of each."""
    from core.data.tasks import get_task
    from core.models.registry import get_method, method_entry, training_stages, with_epochs
    from core.train.device import resolve_device
    from core.train.loop import training_rows

    source = get_task("cells").dataset
    dev = resolve_device(device)
    common.reset_peak(dev)
    base = common.current_rss()
    t0 = time.perf_counter()
    data = resample(source, n)
    build_s = time.perf_counter() - t0
    build_peak = common.peak_rss()
    after_build = common.current_rss()
    split = leave_one_group_out(data.groups, data.y.numpy(), seeds=(0,))[0]
    cls = method_entry(method).config_cls
    stages = training_stages(cls)
    cfg = with_epochs(cls, {f"{s}.{k}": v for s in stages for k, v in (("patience", None), ("batch_size", batch_size))},
                      epochs)
    model = get_method(method, data.specs, data.classes, **cfg)
    common.reset_peak(dev)
    t1 = time.perf_counter()
    fit = model.fit(data, split, seed=0, device=device)
    fit_s = time.perf_counter() - t1
    gpu = common.cuda_peak(dev)
    return {"method": method, "n": n, "n_train": len(training_rows(split.train, split.val, model.config.train)),
            "epochs": epochs, "epochs_run": fit.epochs_run,
            "build_s": build_s, "fit_s": fit_s, "base_rss": base, "after_build_rss": after_build,
            "build_peak_rss": build_peak, "fit_peak_rss": common.peak_rss(), "cuda_peak": gpu,
            "image_bytes": sum(x.nbytes for k, x in data.modalities.items() if data.specs[k].kind == "image"),
            "omics_bytes": sum(x.nbytes for k, x in data.modalities.items() if data.specs[k].kind == "omics"),
            "device": str(dev)}


def measure(method: str, n: int, args: argparse.Namespace) -> dict:
    """:func:`worker` in a fresh interpreter (its peak memory is then this size's alone)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--n", str(n), "--epochs",
           str(args.epochs), "--batch-size", str(args.batch_size), "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{method} at {n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan(done: list[dict], n: int, budget: float) -> tuple[int | None, str | None]:
    """The size to run for a requested ``n`` and why it differs: a fit estimated (linearly, from the
    largest size measured) to exceed ``budget`` seconds is capped to a whole thousand that fits, or
    skipped when that is no larger than what was measured."""
    if not done:
        return n, None
    last = done[-1]
    estimate = last["fit_s"] * n / last["n"]
    if estimate <= budget:
        return n, None
    capped = int(budget / estimate * n) // 1000 * 1000
    why = f"{n:,} cells: fit estimated at {estimate:.0f} s > budget {budget:.0f} s, "
    return (capped, why + f"capped to {capped:,} cells") if capped > last["n"] else (None, why + "skipped")


def per_sample_epoch(r: dict) -> float:
    return r["fit_s"] / (r["epochs"] * r["n_train"])


def scaling_rows(results: list[dict]) -> list[list]:
    """Formatted rows: time, its ratio to the smallest size, and memory in units of the image bytes."""
    rows = []
    for r in results:
        first = next(f for f in results if f["method"] == r["method"])
        peak = max(r["build_peak_rss"], r["fit_peak_rss"]) - r["base_rss"]
        img, fit_extra = r["image_bytes"], r["fit_peak_rss"] - r["after_build_rss"]
        rows.append([r["method"], f"{r['n']:,}" + (" (capped)" if r.get("capped_from") else ""), f"{r['n_train']:,}",
                     r["epochs_run"], f"{r['build_s']:.1f}", f"{r['fit_s']:.1f}",
                     f"{per_sample_epoch(r) * 1e6:.0f}", f"{per_sample_epoch(r) / per_sample_epoch(first):.2f}",
                     f"{img / common.MB:.0f}", f"{r['omics_bytes'] / common.MB:.0f}",
                     f"{(r['after_build_rss'] - r['base_rss']) / common.MB:.0f}", f"{peak / common.MB:.0f}",
                     f"{(peak - r['omics_bytes']) / img:.2f}", f"{fit_extra / img:.2f}",
                     "-" if r["cuda_peak"] is None else f"{r['cuda_peak'] / common.MB:.0f}", r["device"]])
    return rows


def marginal(results: list[dict]) -> list[str]:
    """Between consecutive sizes of a method: added peak memory (less added omics) per added image
    byte. The fixed cost (model, optimiser, libraries) cancels, so 1 means one copy of the images
    and 2 means two."""
    lines = []
    for a, b in zip(results, results[1:]):
        if a["method"] != b["method"]:
            continue
        grow = [max(r["build_peak_rss"], r["fit_peak_rss"]) - r["base_rss"] - r["omics_bytes"] for r in (a, b)]
        fit = [r["fit_peak_rss"] - r["after_build_rss"] for r in (a, b)]
        d_img = b["image_bytes"] - a["image_bytes"]
        lines.append(f"{b['method']} {a['n']:,} -> {b['n']:,} cells: time per sample-epoch x"
                     f"{per_sample_epoch(b) / per_sample_epoch(a):.2f}; added peak (less omics) per added image "
                     f"byte {(grow[1] - grow[0]) / d_img:.2f}, of which the fit's own {(fit[1] - fit[0]) / d_img:.2f}")
    return lines


HEADERS = ["method", "cells", "training rows", "epochs run", "build s", "fit s", "µs per sample-epoch",
           "vs smallest", "image MB", "omics MB", "data resident MB", "peak growth MB", "(peak - omics) / image",
           "fit extra / image", "CUDA peak MB", "device"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="600,6000,60000")
    ap.add_argument("--methods", default="mm_dynamics,hypermm")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of every training stage")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds one fit may be estimated to take")
    ap.add_argument("--out", default=str(common.ROOT / "results" / "bench" / "scaling.md"),
                    help="the Markdown report ('' writes none)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.epochs, args.batch_size, args.device)))
        return
    start, started = time.perf_counter(), common.now()
    header = common.machine_lines() + [
        f"{args.epochs} epoch(s) of every training stage, batch size {args.batch_size}, no early stopping; "
        f"first leave-one-donor-out split; a fresh process per (method, size); fit budget {args.budget:.0f} s"]
    print("\n".join(header))
    results, notes = [], []
    for method in args.methods.split(","):
        done: list[dict] = []
        for asked in sorted(int(v) for v in args.sizes.split(",")):
            n, note = plan(done, asked, args.budget)
            if note:
                notes.append(f"{method}: {note}")
                print(notes[-1])
            if n is None:
                continue
            r = measure(method, n, args) | {"capped_from": asked if n != asked else None}
            done.append(r)
            results.append(r)
            print(f"{method} {n:>7,}: fit {r['fit_s']:.1f} s, build {r['build_s']:.1f} s", flush=True)
    rows = scaling_rows(results)
    md = common.md_table(HEADERS, rows)
    notes += marginal(results) + [f"load average (1, 5, 15 min) at the end: {common.load_now()}"]
    total = time.perf_counter() - start
    print("\n" + md + "".join(f"\n{n}" for n in notes) + f"\nwhole run: {total / 60:.1f} min")
    if args.out:
        text = (f"# Scaling with the number of cells\n\nMeasured {started} by `bench/scaling.py` (wall time "
                f"{total / 60:.1f} min for the whole run):\n\n    {common.command_line('scaling.py')}\n\n```\n"
                + "\n".join(header) + "\n```\n\n" + __doc__.split("\n\n    python")[0].split("\n\n", 1)[1]
                + "\n\nTimes are wall-clock on a machine shared with other jobs (see the load average): upper "
                "bounds. Columns: build s: resampling the data; µs per sample-epoch: fit seconds / (epochs x "
                "training rows), validation included; vs smallest: that time over the smallest size's (1.00 = "
                "linear growth); data resident MB: resident growth once the data was built; peak growth MB: "
                "the highest resident size while building or fitting, above the size before building; "
                "(peak - omics) / image: that peak less the omics bytes, in image-tensor bytes (below 2: never "
                "two copies of the images); fit extra / image: the fit's own peak above the built data, in "
                "image-tensor bytes.\n\n" + md + "\n" + "".join(f"\n- {n}" for n in notes) + "\n")
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

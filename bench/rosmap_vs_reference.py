"""Our ``mm_dynamics`` against a minimal re-implementation of the reference code's training
regime, on the same ROSMAP split (MOGONET), inputs and thread count, in one process.

The reference regime, written here in plain torch: full batch, 1000 epochs, hidden 1000, Adam
lr 1e-4 (weight decay 1e-4), StepLR(500, 0.2); per modality a gate Linear(F, F) + sigmoid
multiplied into the input (L1: the gate's mean), encoder Linear(F, 1000) + ReLU + dropout 0.5,
a classifier and a TCP confidence head (MSE to the true-class probability); latents scaled by
their confidence, concatenated, one linear classifier; unweighted CE; xavier-normal init.
Inputs are min-max scaled with training statistics exactly as ours are.

Rows: the reference regime; ours on the reference schedule (the committed tables' recipe); ours
on the schedule chosen by ``rosmap/schedule_cv`` (5-fold CV inside the training part; the test
part plays no part in the choice). Seeds are interleaved, so machine load hits every row alike.
A short torch.profiler run shows where an epoch of ours goes, before and after the fast paths.

    OMP_NUM_THREADS=1 python bench/rosmap_vs_reference.py [--threads 1] [--seeds 0,1,2]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from core import metrics  # noqa: E402
from core.data.dataset import MultimodalDataset  # noqa: E402
from core.data.splits import Split  # noqa: E402
from core.data.tasks import get_task  # noqa: E402
from core.errors import MMXError  # noqa: E402
from core.experiments.mmdynamics import ROSMAP_TRAIN, SCHEDULE_VARIANTS  # noqa: E402
from core.models import mmdynamics  # noqa: E402
from core.models.prep import InputPrep  # noqa: E402
from core.models.registry import get_method  # noqa: E402
from core.train.device import seed_everything  # noqa: E402
from core.train.loop import training_rows  # noqa: E402
from core.train.results import atomic_write_text  # noqa: E402

# the shorter schedule that rosmap/schedule_cv compared with the reference by CV on the training part
FAST = "300 epochs, StepLR(150, 0.2), Adam 3e-4"
OUT = ROOT / "results" / "bench" / "rosmap_vs_reference.md"


class ReferenceNet(nn.Module):
    """The reference code's MM dynamics network for omics, as it trains on ROSMAP."""

    def __init__(self, dims: list[int], n_classes: int, hidden: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.gates = nn.ModuleList(nn.Linear(d, d) for d in dims)
        self.encoders = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
        self.heads = nn.ModuleList(nn.Linear(hidden, n_classes) for _ in dims)
        self.confidence = nn.ModuleList(nn.Linear(hidden, 1) for _ in dims)
        self.classifier = nn.Linear(hidden * len(dims), n_classes)
        self.dropout = dropout
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_normal_(mod.weight)
                nn.init.zeros_(mod.bias)

    def forward(self, xs: list[torch.Tensor], y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused logits, and the training loss when labels are given."""
        latents, loss = [], torch.zeros(())
        for i, x in enumerate(xs):
            gate = torch.sigmoid(self.gates[i](x))
            h = F.dropout(F.relu(self.encoders[i](x * gate)), self.dropout, training=self.training)
            logits, conf = self.heads[i](h), self.confidence[i](h)
            latents.append(h * conf)
            if y is not None:
                tcp = torch.softmax(logits, 1).gather(1, y[:, None]).view(-1)
                loss = loss + gate.mean() + F.mse_loss(conf.view(-1), tcp) + F.cross_entropy(logits, y)
        fused = self.classifier(torch.cat(latents, 1))
        if y is not None:
            loss = loss + F.cross_entropy(fused, y)
        return fused, loss


def run_reference(data: MultimodalDataset, split: Split, seed: int, epochs: int = 1000) -> tuple[float, np.ndarray]:
    """(training seconds, test probabilities) of the reference regime."""
    seed_everything(seed)
    t0 = time.perf_counter()
    rows = torch.as_tensor(training_rows(split.train, split.val, mmdynamics.reference_training()))
    prep = InputPrep(data.specs, "minmax").fit(data.modalities, data.present, rows)
    x = [v for v in prep({m: v[rows] for m, v in data.modalities.items()}).values()]
    y = data.y[rows]
    net = ReferenceNet([v.shape[1] for v in x], data.n_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, 500, 0.2)
    net.train()
    for _ in range(epochs):
        opt.zero_grad()
        _, loss = net(x, y)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    net.eval()
    test = torch.as_tensor(split.test)
    with torch.no_grad():
        logits, _ = net(list(prep({m: v[test] for m, v in data.modalities.items()}).values()))
    return seconds, torch.softmax(logits, 1).numpy()


def ours(data: MultimodalDataset, schedule: dict, epochs: int | None = None):
    cfg = {**ROSMAP_TRAIN, **schedule, **({"epochs": epochs} if epochs else {})}
    return get_method("mm_dynamics", data.specs, data.classes, **cfg)


def run_ours(data: MultimodalDataset, split: Split, seed: int, schedule: dict) -> tuple[float, np.ndarray]:
    method = ours(data, schedule)
    t0 = time.perf_counter()
    method.fit(data, split, seed=seed, device="cpu")
    seconds = time.perf_counter() - t0
    return seconds, method.predict(data, split.test).proba


def profile(data: MultimodalDataset, split: Split, epochs: int, fast_paths: bool) -> tuple[float, list[tuple]]:
    """(ms per epoch under the profiler, top ops by self CPU time: name, ms per epoch, share)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    plain_dropout = mock.patch.object(mmdynamics, "_same_mask_dropouts", lambda net: net)
    with contextlib.nullcontext() if fast_paths else plain_dropout:  # fit builds the net: patched throughout
        method = ours(data, {}, epochs)
        method.resident_inputs = fast_paths
        method.fit(data, split, seed=0, device="cpu")  # warm-up
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            method.fit(data, split, seed=0, device="cpu")
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return (total / 1e3 / epochs,
            [(e.key, e.self_cpu_time_total / 1e3 / epochs, e.self_cpu_time_total / total) for e in top])


def scores(data: MultimodalDataset, split: Split, proba: np.ndarray) -> tuple[float, float]:
    m = metrics.compute(data.y[torch.as_tensor(split.test)].numpy(), proba, with_auroc=True)
    return m["accuracy"], m["auroc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every row")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--profile-epochs", type=int, default=20, help="epochs per profiled fit (0: no profile)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    schedules = dict(SCHEDULE_VARIANTS)
    if FAST not in schedules:
        raise MMXError(f"schedule {FAST!r} is not a variant of rosmap/schedule_cv ({list(schedules)})")
    td = get_task("rosmap")
    data, split = td.dataset, td.splits["mogonet"][0]
    rows = {"Reference regime (plain torch)": lambda s: run_reference(data, split, s),
            "Ours, reference schedule": lambda s: run_ours(data, split, s, {}),
            f"Ours, {FAST}": lambda s: run_ours(data, split, s, schedules[FAST])}
    run_reference(data, split, 0, epochs=5)  # warm-up of both code paths, untimed
    run_ours(data, split, 0, {"epochs": 5})
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in rows}
    for i, seed in enumerate(seeds):
        order = list(rows) if i % 2 == 0 else list(rows)[::-1]  # alternate who runs first
        for label in order:
            seconds, proba = rows[label](seed)
            results[label].append((seconds, *scores(data, split, proba)))
            print(f"seed {seed}  {label:45s} {seconds:7.1f} s  ACC {results[label][-1][1]:.3f}  "
                  f"AUC {results[label][-1][2]:.3f}", flush=True)
    ref_time = np.mean([r[0] for r in results["Reference regime (plain torch)"]])
    lines = ["| Implementation | Wall time, mean (s) | Per seed (s) | ACC (%) | AUC (%) | Time vs reference |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label, rs in results.items():
        t, acc, auc = (np.array([r[k] for r in rs]) for k in range(3))
        lines.append(f"| {label} | {t.mean():.1f} | {', '.join(f'{v:.1f}' for v in t)} | {100 * acc.mean():.1f} | "
                     f"{100 * auc.mean():.1f} | {t.mean() / ref_time:.2f}x |")
    table = "\n".join(lines)
    print(table)
    prof = []
    if args.profile_epochs:
        for tag, fast in (("before: raw rows indexed, moved and scaled every step; torch dropout", False),
                          ("now: resident prepared rows; same-mask dropout", True)):
            ms, top = profile(data, split, args.profile_epochs, fast)
            prof += [f"*{tag}*: {ms:.1f} ms per epoch under the profiler.", "",
                     "| Op | ms per epoch | Share |", "| --- | --- | --- |",
                     *[f"| `{k}` | {v:.2f} | {100 * s:.0f}% |" for k, v, s in top], ""]
        print("\n".join(prof))
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    text = "\n".join([
        "# MM dynamics on ROSMAP: ours against the reference code's training regime", "",
        f"Measured {datetime.date.today().isoformat()} by `bench/rosmap_vs_reference.py`:", "",
        f"    OMP_NUM_THREADS={args.threads} python bench/rosmap_vs_reference.py --threads {args.threads} "
        f"--seeds {args.seeds}", "",
        f"CPU {cpu}, {args.threads} intra-op thread(s), torch "
        f"{torch.__version__}; one process, seeds {args.seeds} interleaved; wall time of training only "
        "(input scaling included, prediction excluded). MOGONET split: training part "
        f"{len(split.train) + len(split.val)} patients, test {len(split.test)}.", "",
        table, "",
        f"Reference regime: a plain-torch re-implementation inside the bench (see its docstring). Ours: "
        f"`mm_dynamics` with a fixed schedule on the whole training part; \"{FAST}\" is a variant of "
        "`rosmap/schedule_cv`, chosen there by 5-fold cross-validation inside the training part.", "",
        "## Where an epoch of ours goes (torch.profiler, reference schedule, top ops by self CPU time)", "",
        *prof,
    ])
    atomic_write_text(args.out, text + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

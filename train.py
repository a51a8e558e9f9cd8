"""Train and evaluate any method on any task; write result tables under results/.

Examples:
  python train.py --task cells --method early_lr --modalities rna,protein
  python train.py --task rosmap --method late_mlp --epochs 50 --seeds 0,1
  python train.py --experiment cells/image_dynamics     # a named reproduction table
  python train.py --release [--task pbc]                # train the shipped models into checkpoints/
  python train.py --pretrain                            # self-supervised image encoder (checkpoints/encoders/)
  python train.py --all                                 # everything above, resumable (--quick: a smoke run)
  python train.py --evaluate checkpoints/pbc/cnn --data-dir my_images/ --out my_results/   # class sub-folders
  python train.py --evaluate checkpoints/cells/mm_dynamics --data-dir cells.h5mu --label lineage
  python train.py --evaluate checkpoints/cells/mm_dynamics --task cells  # its own test split
  python train.py --predict checkpoints/pbc/cnn --data-dir unlabelled_images/ > probabilities.csv
  python train.py --download all                        # the full data from its public sources (--help: details)
  python train.py --list
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from typing import TYPE_CHECKING

from core.errors import MMXError

if TYPE_CHECKING:
    from core.models.base import MethodConfig


def _pairs(items: list[str], option: str, form: str) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict (text values); a malformed one raises :class:`MMXError`."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise MMXError(f"{option} expects {form}, got {item!r}")
        out[key.strip()] = value
    return out


def method_config(method: str, settings: list[str], epochs: int | None = None) -> "MethodConfig":
    """The config ``--method``, ``--set`` and ``--epochs`` ask for, type-checked: ``epochs``
    reaches every training stage (:func:`core.models.registry.with_epochs`)."""
    from core.models.registry import make_config, method_entry, with_epochs

    config_cls = method_entry(method).config_cls
    overrides = _pairs(settings, "--set", "KEY=VALUE")
    if epochs is not None:
        overrides = with_epochs(config_cls, overrides, epochs)
    return make_config(config_cls, overrides)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", help="task name (see --list)")
    p.add_argument("--method", help="method name (see --list)")
    p.add_argument("--modalities", help="comma-separated subset of the task's modalities (default: all)")
    p.add_argument("--target", help="extra label column to predict instead of the main one (e.g. derm7pt BWV)")
    p.add_argument("--split", help="split scheme of the task (default: the task's first)")
    p.add_argument("--seeds", help="comma-separated seeds to run (default: all of the split scheme)")
    p.add_argument("--epochs", type=int, help="training epochs of EVERY training stage of the method (e.g. "
                   "hypermm's train and rho_train); a --set of one stage's epochs wins")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config setting, checked against its type: KEY=VALUE; a training stage's "
                        "setting as STAGE.KEY, e.g. rho_train.epochs=5 (a flat training key such as lr=0.001 "
                        "sets the 'train' stage); repeatable")
    p.add_argument("--mask", action="append", default=[], metavar="MODALITY=MODE", help="mask at test time")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--data-dir", help="data root (else $MMX_DATA_DIR, ./data, ../shared/data); with --evaluate or "
                   "--predict: the data to score, a path: an image folder (root/<class>/<image>), a CSV, .h5ad or "
                   ".h5mu file (a task's own test split: --task TASK instead)")
    p.add_argument("--out", help="folder for what the command writes (experiments and runs: default results/ of the "
                   "repository; --evaluate / --predict: nothing is written without it, the metrics are printed and "
                   "--predict's CSV goes to standard output)")
    p.add_argument("--release", action="store_true", help="train the shipped models (all, or --task's) into "
                   "--checkpoint-dir; folders whose card matches the code and data are kept")
    p.add_argument("--pretrain", action="store_true", help="pretrain the image encoder (SimCLR) on the images no test "
                   "split holds, into --checkpoint-dir/encoders/ (default: checkpoints/encoders/); resumes a killed "
                   "run; --epochs sets its epochs")
    p.add_argument("--checkpoint-dir", default=None, help="where --release writes (default: checkpoints/)")
    p.add_argument("--evaluate", metavar="CHECKPOINT", help="score a checkpoint folder on --data-dir (labelled)")
    p.add_argument("--predict", metavar="CHECKPOINT", help="class probabilities of a checkpoint on --data-dir "
                   "(no labels needed), written as CSV")
    p.add_argument("--label", help="with --evaluate: the label column of a CSV / AnnData (default: a usual name)")
    p.add_argument("--modality", help="with --evaluate / --predict: the model's modality an image folder or a "
                   "single table feeds (default: found by kind and feature names)")
    p.add_argument("--name", help="experiment name for the output files")
    p.add_argument("--experiment", help="run a named reproduction experiment (see --list)")
    p.add_argument("--all", action="store_true", help="reproduce everything: the encoder, every experiment and the "
                   "release, in dependency order; a step whose code, data and files are unchanged since it last ran "
                   "(recorded in --out/reproduce_all.json) is skipped, so an interrupted run continues")
    p.add_argument("--quick", action="store_true", help="with --all: a smoke run of every step's code (synthetic demo "
                   "task or 1 epoch) into results/quick/ (or --out), checkpoints in --out/checkpoints/")
    p.add_argument("--dry-run", action="store_true", help="with --all: print the plan with the wall time each "
                   "committed table and model set recorded, and the total; run nothing")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--download", nargs="*", metavar="TASK", help="fetch the full data of the TASKs (cells, pbc, rosmap; "
                   "none or 'all': every task) from their public sources at the commits pinned in each SOURCE.md into "
                   "--data-dir (default: the data root, else data/ in the repository), in the layout the tasks read; every file is "
                   "checked against the manifest core/data/download_manifest.json (size, sha256); resumable: run it "
                   "again after a failure or an interruption, a file that fails its checksum is refused, named and "
                   "fetched again; a folder appears only once complete. derm7pt cannot be downloaded (research use "
                   "only): it prints where to obtain it; with --from FOLDER_OR_ZIP it checks and lays out your copy")
    p.add_argument("--from", dest="from_", metavar="FOLDER_OR_ZIP", help="with --download derm7pt: your copy of "
                   "Derm7pt release_v0 (a folder or zip holding release_v0/meta/meta.csv)")
    p.add_argument("--list", action="store_true", help="list tasks, methods and experiments")
    return p.parse_args(argv)


def list_all() -> None:
    from core.data.tasks import list_tasks
    from core.experiments import list_experiments
    from core.models import list_methods
    from core.paths import data_root

    root = data_root()
    print(f"data root: {root or 'none found (only the synthetic demo task is available)'}")
    print("tasks:")
    for t in list_tasks():
        print(f"  {t.name:<10} {'available' if t.available(root) else 'no data  '}  {t.description}")
    print("methods:")
    for m in list_methods():
        print(f"  {m.name:<18} [{m.family}] {m.description}")
    print("experiments:")
    for e in list_experiments():
        print(f"  {e.name:<28} {e.description}")


def run_release(args: argparse.Namespace, command: str) -> int:
    from core.paths import checkpoints_dir
    from core.release import release, table

    start = time.perf_counter()
    out = release(args.task, args.checkpoint_dir or checkpoints_dir(), device=args.device, data_dir=args.data_dir,
                  epochs=args.epochs, progress=True, command=command)
    print(table(out))
    print(f"{sum(o.status == 'trained' for o in out)} trained, {sum(o.status == 'kept' for o in out)} kept, "
          f"{time.perf_counter() - start:.0f} s")
    return 0


def run_pretrain(args: argparse.Namespace, command: str) -> int:
    from pathlib import Path

    from core.models.weights import NAME, read_encoder_card
    from core.pretrain import Recipe, pretrain

    recipe = Recipe(**({"epochs": args.epochs} if args.epochs else {}))
    out = Path(args.checkpoint_dir) / "encoders" / NAME if args.checkpoint_dir else None
    folder = pretrain(out, recipe, data_dir=args.data_dir, progress=True, command=command)
    card = read_encoder_card(folder)
    print(f"wrote {folder}: {card['pool']['images']} images {card['pool']['by_task']}, final loss "
          f"{card['losses'][-1]:.3f}, {card['training_seconds']:.0f} s")
    return 0


def run_all(args: argparse.Namespace, command: str) -> int:
    """``--all`` (``--quick``, ``--dry-run``): exit status 1 when a step failed, 130 when interrupted."""
    from pathlib import Path

    from core.paths import REPO_ROOT
    from core.reproduce import recorded_plan, reproduce_all, summary

    if args.dry_run:
        print(recorded_plan(args.out, args.checkpoint_dir))
        return 0
    out = Path(args.out)
    if args.quick and out.resolve() == (REPO_ROOT / "results").resolve():
        out = out / "quick"  # a smoke run never overwrites the committed tables
    outcomes = reproduce_all(out, device=args.device, data_dir=args.data_dir, checkpoints=args.checkpoint_dir,
                             quick=args.quick, command=command)
    print(summary(outcomes))
    statuses = {o.status for o in outcomes}
    return 130 if "interrupted" in statuses else 1 if "failed" in statuses else 0


def run_download(args: argparse.Namespace) -> int:
    from core.data.download import derm7pt_from, download

    if args.from_:
        if args.download != ["derm7pt"]:
            raise MMXError("--from lays out a copy of derm7pt: give it as --download derm7pt --from FOLDER_OR_ZIP")
        print(derm7pt_from(args.from_, args.data_dir))
        return 0
    for line in download(args.download, args.data_dir, progress=True):
        print(line)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``--evaluate`` / ``--predict``: a checkpoint on the files ``--data-dir`` names, or on the test
    split of ``--task`` (its data under ``--data-dir``); a file only where ``--out`` says."""
    from pathlib import Path

    from core.evaluate import evaluate, predict
    from core.metrics import LABELS, SIX
    from core.shipped import load_folder
    from core.train.device import resolve_device
    from core.train.results import atomic_write_text, write_json

    if args.evaluate and args.predict:
        raise MMXError("give --evaluate or --predict, not both")
    if args.task:
        where = dict(task=args.task, data_dir=args.data_dir)
    elif args.data_dir:
        where = dict(source=args.data_dir)
    else:
        raise MMXError("give the data to score: --data-dir PATH (an image folder, a CSV, .h5ad or .h5mu file) or "
                       "--task TASK (the test split of a task)")
    folder = Path(args.evaluate or args.predict)
    method = load_folder(folder, str(resolve_device(args.device)))
    options = dict(label_column=args.label, modality=args.modality, **where)
    stem = (Path(args.out).resolve() / f"{'evaluate' if args.evaluate else 'predict'}_{folder.parent.name}_"
            f"{folder.name}") if args.out else None
    if args.predict:
        frame, notes = predict(method, **options)
        print("\n".join(notes), file=sys.stderr)
        text = frame.to_csv(index=False, float_format="%.6f")
        if stem is None:
            sys.stdout.write(text)
            return 0
        atomic_write_text(stem.with_suffix(".csv"), text)
        print(frame.head(10).to_string(index=False))
        print(f"wrote {stem.with_suffix('.csv')} ({len(frame)} samples)")
        return 0
    result = evaluate(method, **options)
    print("\n".join(result["notes"]))
    print(f"{result['model']} on {result['source']}: {result['n']} samples, classes present: "
          f"{', '.join(result['classes_present'])}")
    for key in SIX + ("auroc",):
        print(f"  {LABELS[key]:<22} {100 * result['metrics'][key]:6.2f}")
    if stem is None:
        print("(nothing written: --out FOLDER saves these metrics and the per-class recall as JSON)")
        return 0
    write_json(stem.with_suffix(".json"), result)
    print(f"wrote {stem.with_suffix('.json')}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from core.train import distributed

    try:
        args.device = distributed.setup(args.device)  # under torchrun: join the other processes
        if not distributed.is_main():
            return _as_helper_rank(args, argv)
        return _run(args, argv)
    except MMXError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


def _as_helper_rank(args: argparse.Namespace, argv: list[str]) -> int:
    """A rank other than 0 trains its share like rank 0 but writes into a scratch folder that is
    then deleted, and prints nothing: rank 0 alone writes results and checkpoints."""
    import contextlib
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mmx-rank-") as scratch, open(os.devnull, "w") as quiet:
        args.out, args.checkpoint_dir = scratch, scratch
        with contextlib.redirect_stdout(quiet):
            return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    if not (args.evaluate or args.predict):
        args.out = args.out or "results"  # tables and runs; an evaluation writes only where --out says
    if args.list:
        list_all()
        return 0
    if args.download is not None:
        return run_download(args)
    if args.from_:
        raise MMXError("--from goes with --download derm7pt")
    if args.all:
        return run_all(args, "python train.py " + shlex.join(argv))
    if args.quick or args.dry_run:
        raise MMXError("--quick and --dry-run go with --all")
    if args.release:
        return run_release(args, "python train.py " + shlex.join(argv))
    if args.evaluate or args.predict:
        return run_evaluate(args)
    if args.pretrain:
        return run_pretrain(args, "python train.py " + shlex.join(argv))
    if args.experiment:
        from core.experiments import get_experiment

        task = {"task": args.task} if args.task else {}  # another task with the same modalities, e.g. demo
        for path in get_experiment(args.experiment).run(out_dir=args.out, device=args.device,
                                                        data_dir=args.data_dir, progress=args.progress, **task):
            print(f"wrote {path}")
        return 0
    if not args.task or not args.method:
        raise MMXError("give --task and --method (or --experiment, or --list)")
    from core.data.tasks import get_task
    from core.experiments.runner import Row, run_rows, write_table

    # checked before any data is read; the table records the whole resolved config
    config = dataclasses.asdict(method_config(args.method, args.set, args.epochs))
    mask = _pairs(args.mask, "--mask", "MODALITY=MODE") or None
    td = get_task(args.task, args.data_dir)
    if td.dataset.synthetic:
        print("note: task 'demo' is SYNTHETIC data")
    mods = tuple(args.modalities.split(",")) if args.modalities else tuple(td.dataset.specs)
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    row = Row(f"{args.method} ({'+'.join(mods)})", args.method, mods, config, mask, args.target)
    t0 = time.perf_counter()
    results = run_rows(td, [row], args.split, seeds, args.device, args.progress)
    name = args.name or f"{args.method}_{'+'.join(mods)}" + (f"_{args.target}" if args.target else "")
    path = write_table(args.out, td, name, f"{args.method} on {args.task} ({'+'.join(mods)})", results,
                       seconds=time.perf_counter() - t0, device=args.device)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

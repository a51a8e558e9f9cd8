"""The real samples bundled in ``examples/``: a small extract of the test splits of the tasks whose
data may be redistributed (cells: CITE-seq, MIT, with PBC images, CC BY 4.0; pbc; rosmap: MOGONET,
MIT), so a fresh clone with no data folder still has real samples to explain. Never Derm7pt (research
use only, no redistribution).

Every file is a byte copy of a data file or a subset of its lines (:mod:`core.data.extract`), chosen
by a seeded draw per class from the test part of the split every shipped model of the task was scored
on; ``ATTRIBUTION.md`` beside them quotes each source's origin, licence and citation from its
``SOURCE.md``. Rebuild (and check: the result must equal the committed folder) with::

    python -m core.data.examples [--data-dir D] [--out examples]
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.dataset import MultimodalDataset
from core.data.tasks import get_task, list_tasks
from core.errors import MMXError
from core.paths import REPO_ROOT, data_root

EXAMPLES_DIR = REPO_ROOT / "examples"
SEED = 0


@dataclass(frozen=True)
class Extract:
    """What one task's extract holds: ``per_class`` test samples of each class (all of a class that has
    fewer), from the data folders ``sources``."""

    task: str
    per_class: int
    sources: tuple[str, ...]
    unit: str  # what a sample is, for messages ("cells", "images", "patients")


EXTRACTS = {
    "cells": Extract("cells", 9, ("cite_bmmc", "blood_cells/pbc_acevedo2020"), "cells"),
    "pbc": Extract("pbc", 5, ("blood_cells/pbc_acevedo2020",), "images"),
    "rosmap": Extract("rosmap", 15, ("rosmap",), "patients"),
}


def examples_folder(task: str) -> Path:
    return EXAMPLES_DIR / task


def has_examples(task: str) -> bool:
    return task in EXTRACTS and (examples_folder(task) / "ATTRIBUTION.md").is_file()


def read_examples(task: str, **options) -> MultimodalDataset:
    """The bundled samples of ``task`` as a dataset (builder ``options`` such as ``image_size``), read
    the way the task reads its data folder; raises :class:`MMXError` when the task has none."""
    info = next((t for t in list_tasks() if t.name == task), None)
    if info is None or info.examples is None or not has_examples(task):
        raise MMXError(f"no bundled examples of task {task!r} (examples exist for {sorted(EXTRACTS)})")
    return info.examples(examples_folder(task), **options)


def choose(task: str, data_dir: str | Path | None = None) -> list[str]:
    """The ids of the extract: a seeded draw of ``per_class`` test samples per class from the first split
    of the task's default scheme (the split the shipped models' cards name)."""
    td = get_task(task, data_dir)
    test = np.asarray(td.splits[td.default_split][0].test)
    y = td.dataset.y.numpy()[test]
    rng = np.random.default_rng(SEED)
    chosen = [rng.permutation(test[y == k])[:EXTRACTS[task].per_class] for k in np.unique(y)]
    return sorted(str(i) for i in td.dataset.ids[np.concatenate(chosen)])


_SECTION = re.compile(r"^## (.+)$", re.MULTILINE)
_KEEP = re.compile(r"origin|came from|citation|licen[cs]e|terms", re.IGNORECASE)


def attribution(source_md: Path) -> str:
    """The sections of a data folder's ``SOURCE.md`` that attribute it: origin, citation, licence."""
    text = source_md.read_text()
    title = text.splitlines()[0].lstrip("# ").strip()
    heads = list(_SECTION.finditer(text))
    parts = [text[h.start():(heads[i + 1].start() if i + 1 < len(heads) else len(text))].strip()
             for i, h in enumerate(heads) if _KEEP.search(h.group(1))]
    if not parts:
        raise MMXError("no origin, citation or licence section", source_md)
    return "\n\n".join([f"### {title}", *[p.replace("## ", "#### ", 1) for p in parts]])


def write_examples(data_dir: str | Path | None = None, out: str | Path = EXAMPLES_DIR) -> list[Path]:
    """Write every task's extract under ``out`` from the data folder (the command in the module doc)."""
    from core.data.tasks import cells, pbc, rosmap

    writers = {"cells": cells.write_examples, "pbc": pbc.write_examples, "rosmap": rosmap.write_examples}
    root = data_root(data_dir)
    if root is None:
        raise MMXError("no data folder to extract the examples from (give --data-dir)")
    out, written = Path(out), []
    for task, ex in EXTRACTS.items():
        folder = out / task
        ids = choose(task, root)
        td = get_task(task, root)
        n_test = len(td.splits[td.default_split][0].test)
        written += writers[task](root, ids, folder)
        lines = [f"# Examples of the `{task}` task: {len(ids)} of its {n_test} test {ex.unit}", "",
                 f"Real samples, an extract of the data folders {', '.join(f'`{s}`' for s in ex.sources)}, made by "
                 "`python -m core.data.examples` (see `core/data/examples.py`): a seeded draw (seed "
                 f"{SEED}) of up to {ex.per_class} test {ex.unit} per class from the test part of split "
                 f"`{td.splits[td.default_split][0].name}`, the split the shipped {task} models were scored on. "
                 "Every file is a byte copy of a data file or a subset of its lines; nothing was changed.", "",
                 "The sources, their licences and how to cite them (from each folder's `SOURCE.md`):", ""]
        lines += [attribution(root / s / "SOURCE.md") + "\n" for s in ex.sources]
        (folder / "ATTRIBUTION.md").write_text("\n".join(lines))
        written.append(folder / "ATTRIBUTION.md")
    readme = ["# Bundled examples", "",
              "Real test samples of the tasks whose data may be redistributed, so that a machine without the data "
              "folder still has something to explain (the dashboard and `train.py --evaluate CHECKPOINT --task TASK` "
              "use them when the data root lacks a task, and say so). Made by `python -m core.data.examples` from "
              "the data folder; every file is a byte copy of a data file or a subset of its lines. Each folder's "
              "`ATTRIBUTION.md` gives the origin, licence and citation of what it holds.", "",
              *[f"- `{t}/`: {ex.per_class} test {ex.unit} per class at most, from {', '.join(ex.sources)}"
                for t, ex in EXTRACTS.items()], "",
              "No Derm7pt file is here: Derm7pt is for academic research only and may not be redistributed "
              "(`python train.py --download derm7pt` says where it is obtained).", ""]
    (out / "README.md").write_text("\n".join(readme))
    return [*written, out / "README.md"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="the data folder to extract from (default: the data root)")
    p.add_argument("--out", default=str(EXAMPLES_DIR), help="where to write (default: examples/)")
    args = p.parse_args(argv)
    files = write_examples(args.data_dir, args.out)
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} files, {size / 1e6:.2f} MB, under {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

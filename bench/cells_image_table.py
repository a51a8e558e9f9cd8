"""The wall time of the whole cells image table against its goal, read from the recorded run.

The experiment ``cells/image_dynamics`` (every row, leave-one-donor-out x 3 seeds) takes tens of
minutes on 2 cores, so this does not rerun it: it reads the wall time the experiment recorded in
``results/cells/image_dynamics.json`` and how its rows' fit seconds add up, and says whether the
goal holds.

    python bench/cells_image_table.py [--goal-min 15] [--json results/cells/image_dynamics.json]
                                      [--out results/bench/cells_image_table.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common  # noqa: E402
from core.train.results import atomic_write_text  # noqa: E402

RESULT = common.ROOT / "results" / "cells" / "image_dynamics.json"


def report(raw: dict, goal_min: float, source: str) -> str:
    """The Markdown report: verdict, then fit seconds per row (the rows' share of the wall time)."""
    wall = float(raw["wall_seconds"])
    rows = [(r["label"], r["row"].get("config", {}).get("encoder", "small"), len(r["runs"]),
             sum(run["fit_seconds"] for run in r["runs"])) for r in raw["rows"]]
    fit_total = sum(r[3] for r in rows)
    verdict = "met" if wall <= goal_min * 60 else "NOT met"
    by_encoder: dict[str, float] = {}
    for _, enc, _, s in rows:
        by_encoder[enc] = by_encoder.get(enc, 0.0) + s
    table = common.md_table(["row", "image encoder", "runs", "fit s", "share of fit time"],
                            [[label, enc, n, f"{s:.0f}", f"{s / fit_total:.0%}"] for label, enc, n, s in rows])
    split = "; ".join(f"{enc} encoder rows {s / 60:.1f} min" for enc, s in by_encoder.items())
    return (f"# Cells image table: wall time\n\nRead by `bench/cells_image_table.py` from `{source}` (not rerun):\n\n"
            f"    {common.command_line('cells_image_table.py')}\n\n"
            f"Recorded run: `{raw.get('command', '?')}`, written {raw.get('written', '?')} on {raw.get('host', '?')} "
            f"({raw.get('device', '?')}, torch {raw.get('torch', '?')}), {len(rows)} rows.\n\n"
            f"Whole table: wall time {wall / 60:.1f} min; goal <= {goal_min:g} min on 2 cores: {verdict}.\n\n"
            f"The rows' fits add up to {fit_total / 60:.1f} min ({split}); the rest ({(wall - fit_total) / 60:.1f} "
            "min) is data loading, prediction and writing. The load average of the machine during the recorded "
            "run is not recorded, so how much other jobs slowed it is unknown.\n\n" + table + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--goal-min", type=float, default=15.0)
    ap.add_argument("--json", default=str(RESULT))
    ap.add_argument("--out", default=str(common.ROOT / "results" / "bench" / "cells_image_table.md"),
                    help="the Markdown report ('' writes none)")
    args = ap.parse_args()
    path = Path(args.json).resolve()
    source = path.relative_to(common.ROOT).as_posix() if path.is_relative_to(common.ROOT) else str(path)
    text = report(json.loads(path.read_text()), args.goal_min, source)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

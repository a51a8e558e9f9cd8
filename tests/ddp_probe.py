"""Run by tests/test_distributed.py under ``torchrun``: fit one small model on the synthetic demo
task and write, per rank, the final weights and the training rows each epoch gave this rank."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save_file  # noqa: E402

from core.data.tasks import get_task  # noqa: E402
from core.models import get_method  # noqa: E402
from core.train import distributed  # noqa: E402


def main(out: Path) -> None:
    distributed.setup("cpu")
    seen = []
    share = distributed.epoch_rows

    def spy(rows, epoch, seed):
        rows = share(rows, epoch, seed)
        seen.append(rows.tolist())
        return rows

    distributed.epoch_rows = spy
    task = get_task("demo")
    ds = task.dataset
    method = get_method("late_mlp", ds.specs, ds.classes, epochs=3, patience=None)
    method.fit(ds, task.splits[task.default_split][0], seed=0, device="cpu")
    r = distributed.rank()
    save_file({k: v.contiguous() for k, v in method.net.state_dict().items()}, str(out / f"rank{r}.safetensors"))
    (out / f"rank{r}.json").write_text(json.dumps({"world": distributed.world_size(), "seen": seen}))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

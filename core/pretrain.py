"""Self-supervised pretraining of the image encoder on our own images (SimCLR, with lightly),
because ImageNet weights cannot be downloaded here.

The rule: the encoder never sees, even unlabelled, an image of a test split it is later
evaluated on. :func:`pretraining_pool` therefore takes the PBC images outside every test split
of the ``pbc`` task and not paired with any ``cells`` cell (under leave-one-donor-out every
cells image is a test image once), and both derm7pt photos of the cases outside the derm7pt
test split. ``python train.py --pretrain`` trains the trunk of
:func:`core.models.encoders.resnet_trunk` and writes ``checkpoints/encoders/resnet_simclr/``:
``trunk.safetensors`` and ``encoder.json`` (the pool, the recipe, the loss per epoch, the time,
the sha256 of the weights). A killed run resumes from its last finished epoch.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from core.errors import MMXError
from core.models.weights import CARD, FORMAT, NAME, WEIGHTS
from core.models.encoders import TRUNK_FEATURES, resnet_trunk
from core.paths import checkpoints_dir
from core.train.results import atomic_folder, atomic_write_bytes

STATE = "resume.pt"  # the last finished epoch of an unfinished run (tensors and numbers only)


@dataclass(frozen=True)
class Recipe:
    image_size: int = 64
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.5  # NT-Xent
    projection: tuple[int, int] = (256, 128)  # SimCLR head: hidden, output
    min_scale: float = 0.25  # smallest random crop (share of the image)
    seed: int = 0


@dataclass
class Pool:
    """Images a pretraining may see (``N x 3 x S x S`` uint8) and where each comes from."""

    images: torch.Tensor
    sources: list[str]
    excluded: dict[str, int] = field(default_factory=dict)  # why images were left out -> how many

    def digest(self) -> str:
        return hashlib.sha256("\n".join(sorted(self.sources)).encode()).hexdigest()

    def counts(self) -> dict[str, int]:
        tasks = [s.split(":")[0] for s in self.sources]
        return {t: tasks.count(t) for t in sorted(set(tasks))}


def held_out_rows(task) -> np.ndarray:
    """Every row that is in the test part of any split of ``task`` (any scheme, fold or seed)."""
    rows = [np.asarray(s.test) for splits in task.splits.values() for s in splits]
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def pretraining_pool(data_dir: str | Path | None = None, image_size: int = 64) -> Pool:
    """The images the rule allows (see the module docstring)."""
    from core.data.tasks import get_task

    pbc = get_task("pbc", data_dir, image_size=image_size)
    cells = get_task("cells", data_dir, image_size=image_size)
    derm = get_task("derm7pt", data_dir, image_size=image_size)
    paths = np.asarray(pbc.dataset.ids).astype(str)
    in_test = np.isin(np.arange(len(paths)), held_out_rows(pbc))
    paired = np.isin(paths, cells.notes["pairing"]["image"].astype(str).to_numpy())
    keep = ~in_test & ~paired
    images, sources = [pbc.dataset.modalities["image"][torch.as_tensor(np.flatnonzero(keep))]], [
        f"pbc:{p}" for p in paths[keep]]
    d = derm.dataset
    free = np.setdiff1d(np.arange(len(d)), held_out_rows(derm))
    for m in ("derm", "clinic"):
        rows = free[d.present[m][torch.as_tensor(free)].numpy()]
        images.append(d.modalities[m][torch.as_tensor(rows)])
        sources += [f"derm7pt:{d.ids[r]}:{m}" for r in rows]
    derm_test = int(sum(d.present[m][torch.as_tensor(held_out_rows(derm))].sum() for m in ("derm", "clinic")))
    return Pool(torch.cat(images), sources, {"pbc: in a pbc test split": int(in_test.sum()),
                                             "pbc: paired with a cells cell": int((paired & ~in_test).sum()),
                                             "derm7pt: photo of a test case": derm_test})


def _views(images: torch.Tensor, transform, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views of each uint8 image (lightly's SimCLR transform, floats in [0, 1])."""
    import random

    from PIL import Image

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    torch.manual_seed(seed)  # the transforms draw from the global generators (torch, numpy, random)
    np.random.seed(seed)
    random.seed(seed)
    pairs = [transform(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images]
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def pretrain(out_dir: str | Path | None = None, recipe: Recipe = Recipe(), *, data_dir: str | Path | None = None,
             pool: Pool | None = None, progress: bool = True, command: str = "") -> Path:
    """Train the trunk with SimCLR on ``pool`` (default :func:`pretraining_pool`) and write it,
    resuming a killed run of the same recipe on the same pool from its last finished epoch."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from safetensors.torch import save as save_tensors
    from tqdm.auto import tqdm


    out = Path(out_dir) if out_dir is not None else checkpoints_dir() / "encoders" / NAME
    pool = pool if pool is not None else pretraining_pool(data_dir, recipe.image_size)
    if len(pool.sources) < 2 * recipe.batch_size:
        raise MMXError(f"the pretraining pool holds {len(pool.sources)} images: too few for batches of "
                       f"{recipe.batch_size}")
    torch.manual_seed(recipe.seed)
    trunk = resnet_trunk(3)
    head = SimCLRProjectionHead(TRUNK_FEATURES, *recipe.projection)
    params = [*trunk.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.epochs)
    criterion = NTXentLoss(temperature=recipe.temperature)
    transform = SimCLRTransform(input_size=recipe.image_size, min_scale=recipe.min_scale, gaussian_blur=0.0,
                                vf_prob=0.5, rr_prob=0.5, normalize=None)
    key = hashlib.sha256(json.dumps({"recipe": asdict(recipe), "pool": pool.digest()}).encode()).hexdigest()
    state_path, losses, start, seconds = out / STATE, [], 0, 0.0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        if state.get("key") == key:
            trunk.load_state_dict(state["trunk"])
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            losses, start, seconds = list(state["losses"]), int(state["epoch"]), float(state["seconds"])
    bar = tqdm(range(start, recipe.epochs), desc="pretrain", unit="epoch", initial=start, total=recipe.epochs,
               disable=not progress, file=sys.stdout)
    for epoch in bar:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(recipe.seed * 100_003 + epoch)  # an epoch's draws do not depend on a resume
        order = torch.randperm(len(pool.sources), generator=g)
        trunk.train()
        head.train()
        total, batches = 0.0, 0
        for b in range(0, len(order) - recipe.batch_size + 1, recipe.batch_size):  # whole batches only
            x0, x1 = _views(pool.images[order[b:b + recipe.batch_size]], transform, g)
            loss = criterion(head(trunk(x0)), head(trunk(x1)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, batches = total + loss.item(), batches + 1
        sched.step()
        losses.append(total / batches)
        seconds += time.perf_counter() - t0
        bar.set_postfix_str(f"loss {losses[-1]:.3f}")
        out.mkdir(parents=True, exist_ok=True)
        buf = _state_bytes({"key": key, "epoch": epoch + 1, "trunk": trunk.state_dict(), "head": head.state_dict(),
                            "opt": opt.state_dict(), "sched": sched.state_dict(), "losses": losses,
                            "seconds": seconds})
        atomic_write_bytes(state_path, buf)
    weights = save_tensors(_stored(trunk.state_dict()))
    arch = f"torchvision ResNet, BasicBlock [1, 1, 1, 1], {TRUNK_FEATURES // 8}-{TRUNK_FEATURES} channels"
    card = {"format": FORMAT, "name": NAME, "architecture": arch, "features": TRUNK_FEATURES, "dtype": "float16",
            "method": "SimCLR (lightly)", "recipe": asdict(recipe), "key": key,
            "pool": {"images": len(pool.sources), "by_task": pool.counts(), "excluded": pool.excluded,
                     "sha256": pool.digest()},
            "losses": [round(v, 5) for v in losses], "training_seconds": round(seconds, 1), "command": command,
            "versions": {"torch": torch.__version__, "lightly": version("lightly")},
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "files": {WEIGHTS: hashlib.sha256(weights).hexdigest()}}
    # the finished folder replaces the old one whole, resume state included: a kill leaves one or the other
    with atomic_folder(out, owns=lambda name: name in (CARD, WEIGHTS, STATE)) as stage:
        (stage / WEIGHTS).write_bytes(weights)
        (stage / CARD).write_text(json.dumps(card, indent=1) + "\n")
    return out


def _stored(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk as shipped: floating tensors in float16 (half the size; a starting point for
    training loses nothing by it), loaded back as float32 by :func:`load_trunk`."""
    return {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous() for k, v in state.items()}


def _state_bytes(state: dict) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()

"""The one training loop every deep method uses.

Early stopping on a validation metric with a *copy* of the best weights, class-weighted
loss, CUDA mixed precision (bf16, channels_last images) when present, random flips only while
training, seeded order; predictions run under ``torch.inference_mode``.
Small training sets stay on the device already prepared (:class:`ResidentRows`), and the loss
is read back once per epoch, not once per step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from core import metrics
from core.data.dataset import MultimodalDataset
from core.errors import MMXError
from core.train import distributed
from core.train.output import ModelOutput


@dataclass
class TrainConfig:
    """Optimisation settings shared by the deep methods (each method sets its defaults)."""

    epochs: int = 100
    batch_size: int | None = 64  # None: full batch
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_step: int | None = None  # StepLR step (epochs); None: constant learning rate
    lr_gamma: float = 0.2
    patience: int | None = 20  # epochs without validation improvement; None: run all epochs
    monitor: str = "balanced_accuracy"  # a metric from core.metrics, or "loss"
    augment: bool = False  # random horizontal/vertical flips of images, training only
    # also random resized crops (scale 0.5-1), 90-degree rotations and colour jitter, per image (torchvision v2)
    strong_augment: bool = False
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay)
    encoder_lr: float | None = None  # learning rate of image trunks that start from weights (None: lr)
    cosine: bool = False  # cosine decay of the learning rate to 0 over ``epochs`` (instead of lr_step)
    class_weighted: bool = True
    eval_every: int = 1
    # True: no selection. Train on train + validation for exactly ``epochs`` epochs and keep the
    # final weights (the protocol of the MM dynamics reference code)
    fixed_schedule: bool = False


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """The numbers without the history, JSON-safe (a non-finite score becomes None):
        what a checkpoint card keeps of a fit."""
        score = float(self.best_score)
        return {"best_epoch": int(self.best_epoch), "best_score": score if np.isfinite(score) else None,
                "epochs_run": int(self.epochs_run), "seconds": round(float(self.seconds), 2)}

    @classmethod
    def from_summary(cls, d: dict) -> FitResult:
        """A fit result rebuilt from :meth:`summary` (missing numbers: 0 or NaN). Its
        ``history`` is empty: the per-epoch record is not kept in checkpoints."""
        def num(key, default, kind):
            v = d.get(key)
            return default if v is None else kind(v)

        return cls(num("best_epoch", 0, int), num("best_score", float("nan"), float), num("epochs_run", 0, int),
                   num("seconds", float("nan"), float), [])


def class_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (C * n_c)`` from the training labels (1 for absent classes)."""
    counts = torch.bincount(y, minlength=n_classes).float()
    w = len(y) / (n_classes * counts.clamp(min=1))
    return torch.where(counts > 0, w, torch.ones_like(w))


def random_flips(x: dict[str, torch.Tensor], image_modalities: list[str], gen: torch.Generator) -> dict:
    """Flip each image left-right and/or up-down with probability 1/2 (training only)."""
    out = dict(x)
    for m in image_modalities:
        v = out[m]
        n = v.shape[0]
        h = torch.rand(n, generator=gen) < 0.5
        w = torch.rand(n, generator=gen) < 0.5
        v = torch.where(h.to(v.device)[:, None, None, None], v.flip(-1), v)
        out[m] = torch.where(w.to(v.device)[:, None, None, None], v.flip(-2), v)
    return out


def strong_augment(x: dict[str, torch.Tensor], image_modalities: list[str], gen: torch.Generator) -> dict:
    """Per image: a random resized crop back to its size (scale 0.5-1), colour jitter, flips and a
    90-degree rotation (square images). The crop and jitter draw from torch's seeded global generator."""
    from torchvision.transforms import v2

    out = dict(x)
    for m in image_modalities:
        v = out[m]
        t = v2.Compose([v2.RandomResizedCrop(tuple(v.shape[-2:]), scale=(0.5, 1.0), antialias=True),
                        v2.ColorJitter(0.2, 0.2, 0.2, 0.02)])
        v = torch.stack([t(img) for img in v])
        if v.shape[-1] == v.shape[-2]:
            k = torch.randint(0, 4, (len(v),), generator=gen)
            v = torch.stack([torch.rot90(img, int(r), (-2, -1)) for img, r in zip(v, k)])
        out[m] = v
    return random_flips(out, image_modalities, gen)


def optimiser(net: nn.Module, cfg: TrainConfig, params: list[nn.Parameter] | None) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters; image trunks that start from weights (the
    encoders' ``pretrained`` trunks) at ``encoder_lr`` when it is set."""
    if cfg.optimizer not in ("adam", "adamw"):
        raise MMXError(f"optimizer {cfg.optimizer!r} is not adam or adamw")
    params = params if params is not None else [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": params}]
    if cfg.encoder_lr is not None:
        trunks = {id(p) for m in net.modules() if getattr(m, "pretrained", False) and hasattr(m, "trunk")
                  for p in m.trunk.parameters()}
        groups = [{"params": [p for p in params if id(p) not in trunks]},
                  {"params": [p for p in params if id(p) in trunks], "lr": cfg.encoder_lr}]
        groups = [g for g in groups if g["params"]]
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def channels_last(module: nn.Module, device: torch.device) -> nn.Module:
    """On CUDA, convolution weights in ``channels_last`` layout (faster cuDNN kernels under bf16);
    unchanged elsewhere. :func:`to_device` lays image batches out the same way."""
    return module.to(memory_format=torch.channels_last) if device.type == "cuda" else module


def to_device(batch: dict, device: torch.device) -> dict:
    def placed(v: torch.Tensor) -> torch.Tensor:
        v = v.to(device, non_blocking=True)
        return v.contiguous(memory_format=torch.channels_last) if device.type == "cuda" and v.ndim == 4 else v

    return {
        "x": {m: placed(v) for m, v in batch["x"].items()},
        "present": {m: v.to(device) for m, v in batch["present"].items()},
        "y": batch["y"].to(device),
        "index": batch["index"],
    }


def iterate(n_or_idx: np.ndarray, batch_size: int | None, gen: torch.Generator | None = None):
    """Index chunks of ``n_or_idx``; shuffled when a generator is given (training), and then a
    last chunk of one row joins the chunk before it: batch norm cannot train on a single sample
    whose feature map is 1 x 1 (a ResNet's last stage on a 32 px image)."""
    idx = torch.as_tensor(n_or_idx)
    if gen is not None:
        idx = idx[torch.randperm(len(idx), generator=gen)]
    size = len(idx) if not batch_size else batch_size
    starts = list(range(0, len(idx), size))
    if gen is not None and len(starts) > 1 and len(idx) - starts[-1] == 1:
        starts.pop()
    for i, s in enumerate(starts):
        yield idx[s:starts[i + 1] if i + 1 < len(starts) else len(idx)]


# training inputs up to this size stay on the device for a whole fit (ROSMAP: 0.6 MB)
RESIDENT_BYTES = 256 * 2**20


class ResidentRows:
    """The training rows of a fit, moved to the device once; a step gathers its rows from them
    instead of indexing and moving the raw data again. Omics are prepared (scaled) once; images
    stay uint8, one copy, and are prepared per step. The same numbers as the per-step path:
    preparation is elementwise per row, so gathering before or after it is exact."""

    def __init__(self, data: MultimodalDataset, rows: np.ndarray, device: torch.device,
                 prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]):
        batch = to_device(data.batch(rows), device)
        self.prepare = prepare
        with torch.no_grad():
            self.x = {**batch["x"], **prepare({m: v for m, v in batch["x"].items() if v.dtype != torch.uint8})}
        self.present, self.y = batch["present"], batch["y"]
        self.position = torch.full((len(data),), -1, dtype=torch.long)
        self.position[torch.as_tensor(rows)] = torch.arange(len(rows))

    @staticmethod
    def fits(data: MultimodalDataset, rows: np.ndarray) -> bool:
        """Whether the resident inputs of ``rows`` (omics as float32, images as uint8) stay under
        :data:`RESIDENT_BYTES`."""
        return sum(v[0].numel() * v.element_size() * len(rows) for v in data.modalities.values()) <= RESIDENT_BYTES

    def batch(self, idx: torch.Tensor) -> dict:
        """The device batch of data rows ``idx``, inputs prepared (``"prepared": True``)."""
        p = self.position[idx].to(self.y.device)
        x = {m: v[p] for m, v in self.x.items()}
        x.update(self.prepare({m: v for m, v in x.items() if v.dtype == torch.uint8}))
        return {"x": x, "present": {m: v[p] for m, v in self.present.items()}, "y": self.y[p], "index": idx,
                "prepared": True}


def epoch_batches(rows: np.ndarray, batch_size: int | None, gen: torch.Generator, epoch: int, seed: int):
    """This process's training batches of ``epoch``: every row, shuffled by ``gen``; under
    ``torchrun``, its ``DistributedSampler`` share, in steps that keep the global batch size."""
    if not distributed.active():
        return iterate(rows, batch_size, gen)
    return iterate(distributed.epoch_rows(rows, epoch, seed), distributed.rank_batch_size(batch_size), gen)


def training_rows(train_idx: np.ndarray, val_idx: np.ndarray, cfg: TrainConfig | None) -> np.ndarray:
    """The rows a model learns from (its input scaling included): with a fixed schedule nothing
    is selected, so the validation rows train too."""
    if cfg is not None and cfg.fixed_schedule:
        return np.concatenate([np.asarray(train_idx), np.asarray(val_idx)])
    return np.asarray(train_idx)


def fit(
    net: nn.Module,
    forward: Callable[[dict, bool], ModelOutput],
    data: MultimodalDataset,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    progress: bool = False,
    callback: Callable[[int, int, dict], None] | None = None,
    params: list[nn.Parameter] | None = None,
    prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> FitResult:
    """Train ``net`` in place; on return it holds the best-validation weights.

    ``forward(batch, train)`` prepares a device batch and runs the net; ``net.loss(out, y,
    weight)`` returns ``(loss, terms)``. ``params`` restricts what the optimiser updates.
    ``prepare`` (raw inputs -> prepared inputs, elementwise per row): when given and the training
    rows are small enough, they are prepared once and kept on the device, and ``forward`` gets
    batches marked ``"prepared": True`` whose inputs it must not prepare again.
    """
    if cfg.epochs < 1:
        raise MMXError(f"training needs at least 1 epoch, got epochs={cfg.epochs}")
    t0 = time.perf_counter()
    channels_last(net, device)
    train_idx = training_rows(train_idx, val_idx, cfg)
    gen = torch.Generator().manual_seed(seed)
    y = data.y[torch.as_tensor(train_idx)]
    weight = class_weights(y, data.n_classes).to(device) if cfg.class_weighted else None
    opt = optimiser(net, cfg, params)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs) if cfg.cosine else
             torch.optim.lr_scheduler.StepLR(opt, cfg.lr_step, cfg.lr_gamma) if cfg.lr_step else None)
    amp = device.type == "cuda"
    higher = cfg.monitor != "loss"
    best = (-np.inf if higher else np.inf, np.inf)
    best_state, best_epoch, history, stale = None, 0, [], 0
    resident = ResidentRows(data, train_idx, device, prepare) if prepare and ResidentRows.fits(data, train_idx) \
        else None
    bar = range(1, cfg.epochs + 1)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="epochs", leave=False)
    with distributed.data_parallel(net):  # a no-op in a single process
        for epoch in bar:
            net.train()
            losses = []  # (loss, rows) per step, read back after the epoch: no device sync per step
            for idx in epoch_batches(train_idx, cfg.batch_size, gen, epoch, seed):
                batch = resident.batch(idx) if resident else to_device(data.batch(idx), device)
                images = [m for m, s in data.specs.items() if s.kind == "image"]
                if cfg.strong_augment:
                    batch["x"] = strong_augment(batch["x"], images, gen)
                elif cfg.augment:
                    batch["x"] = random_flips(batch["x"], images, gen)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = forward(batch, True)
                    loss, _ = net.loss(out, batch["y"], weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append((loss.detach(), len(idx)))
            total, seen = sum(float(v) * n for v, n in losses), sum(n for _, n in losses)
            if sched is not None:
                sched.step()
            if cfg.fixed_schedule:
                history.append({"epoch": epoch, "train_loss": total / max(seen, 1)})
                best_epoch = epoch
                if callback is not None:
                    callback(epoch, cfg.epochs, history[-1])
                continue
            if epoch % cfg.eval_every and epoch != cfg.epochs:
                continue
            val = evaluate(net, forward, data, val_idx, device, weight, cfg.batch_size)
            score = val["loss"] if cfg.monitor == "loss" else val[cfg.monitor]
            history.append({"epoch": epoch, "train_loss": total / max(seen, 1), **val})
            better = (score > best[0] or (score == best[0] and val["loss"] < best[1])) if higher else score < best[0]
            if better:
                best, best_epoch, stale = (score, val["loss"]), epoch, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += cfg.eval_every
            if progress:
                bar.set_postfix(loss=f"{total / max(seen, 1):.3f}", val=f"{score:.3f}")
            if callback is not None:
                callback(epoch, cfg.epochs, history[-1])
            if cfg.patience is not None and stale >= cfg.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return FitResult(best_epoch, float(best[0]), epoch, time.perf_counter() - t0, history)


def predict_outputs(net: nn.Module, forward: Callable[[dict, bool], ModelOutput], data: MultimodalDataset,
                    idx: np.ndarray, device: torch.device, batch_size: int | None = 256) -> ModelOutput:
    """Forward ``idx`` in eval mode, batch by batch, gathered on the CPU. Each batch runs under
    ``torch.inference_mode`` (no autograd bookkeeping); joining the batches outside it gives
    ordinary tensors, which later training stages may learn from (guidance's latents)."""
    channels_last(net, device).eval()
    parts = []
    for chunk in iterate(np.asarray(idx), batch_size or 256):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            parts.append(forward(to_device(data.batch(chunk), device), False).detach_cpu())
    return ModelOutput.concat(parts)


def evaluate(net, forward, data, idx, device, weight, batch_size) -> dict:
    """Validation loss and metrics. The loss is class-weighted cross-entropy on the logits, or
    ``net.validation_loss(out, y)`` where a net defines one (e.g. a regression stage)."""
    out = predict_outputs(net, forward, data, idx, device, batch_size)
    y = data.y[torch.as_tensor(idx)]
    custom = getattr(net, "validation_loss", None)
    with torch.no_grad():
        if custom is not None:
            loss = custom(out, y)
        else:
            loss = nn.functional.cross_entropy(out.logits, y, weight=None if weight is None else weight.cpu())
    return {"loss": float(loss), **metrics.compute(y.numpy(), torch.softmax(out.logits, 1).numpy(), with_auroc=False)}

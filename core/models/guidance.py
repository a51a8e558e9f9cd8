"""``guidance``: deep multimodal guidance (Mallya & Hamarneh, MICCAI 2022).

A cheap (inferior) modality I is steered by an expensive (superior) one S that is needed only
for training:

1. C_I and C_S: an encoder per modality (``core.models.encoders``) and a linear head, each
   trained on its own modality. ``tasks`` adds heads for more label columns, so one latent
   serves several targets (the reference's multi-task features) and :meth:`retarget` reuses it.
2. Both frozen; the latents z_I, z_S of the training and validation rows are computed once.
3. G, an autoencoder-shaped MLP, learns z_I -> z_S (MSE), early-stopped on validation MSE.
4. G frozen; D_c classifies [G(z_I), z_I] with class-weighted CE, early-stopped on validation.

:meth:`GuidanceMethod.predict` reads only the inferior modality. Its heads: ``G(I)+I`` (D_c, the
method's answer), ``G(I)`` (C_S's head on G(z_I)) and ``I`` (C_I alone, the unguided baseline).
The reference rows ``S`` (C_S) and ``S+I`` (a decoder on [z_S, z_I] over the same frozen
encoders) need the superior modality, so only :meth:`GuidanceMethod.reference_predict` gives them.

Defects of the reference code avoided here: the logits leave D_c straight from a linear layer
(no ReLU or dropout after it), every layer is used, class weights come from the labels of the
rows actually trained on (the shared loop draws labels with their rows), and there is no
BatchNorm, so a prediction never depends on the rest of its batch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data.dataset import ModalitySpec, MultimodalDataset
from core.data.splits import Split
from core.errors import MMXError
from core.models.base import Method, MethodConfig, Net, Prediction
from core.models.encoders import build_encoder, init_pretrained
from core.models.masking import parse_mask
from core.models.prefix_cache import PrefixCache, cacheable
from core.models.registry import register_method
from core.train import loop
from core.train.device import seed_everything
from core.train.loop import TrainConfig
from core.train.output import ModelOutput

INFERENCE_HEADS = ("G(I)+I", "G(I)", "I")
REFERENCE_HEADS = ("S", "S+I")


@dataclass
class GuidanceConfig(MethodConfig):
    inferior: str = ""  # the modality used at inference ("": the first modality)
    superior: tuple[str, ...] = ()  # modalities used only for training (empty: all the others)
    tasks: tuple[str, ...] = ()  # extra label columns trained as extra heads of C_I and C_S
    latent: int = 256  # latent width of each modality's encoder
    latent_sizes: dict = field(default_factory=dict)  # per-modality widths overriding ``latent``
    dropout: float = 0.5  # inside the encoders
    encoder: str = "small"  # image encoders of C_I and C_S: small | resnet | pretrained | efficientnet_lite0
    freeze_encoder: bool = False  # pretrained / ImageNet encoders only: keep the trunk's starting weights fixed
    encoder_tune_stages: int | None = None  # ImageNet encoders: train only the last N trunk units (None: all)
    guide_hidden: int = 512  # G: z_I -> hidden -> bottleneck -> hidden -> z_S
    bottleneck: int = 256
    guide_dropout: float = 0.1
    decoder_hidden: int = 128  # D_c and the S+I decoder
    decoder_dropout: float = 0.25
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, batch_size=32, lr=1e-3, patience=20))
    guide_train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=300, batch_size=64, lr=1e-3, patience=30, monitor="loss", class_weighted=False))
    decoder_train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=200, batch_size=64, lr=1e-3, patience=30))


class ModalityClassifier(Net):
    """C_I or C_S: one encoder per modality, latents concatenated into z, a linear head."""

    def __init__(self, specs: dict[str, ModalitySpec], sizes: dict[str, int], dropout: float, n_classes: int,
                 encoder: str = "small", freeze: bool = False, tune_stages: int | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict({m: build_encoder(s, sizes[m], dropout, encoder, freeze, tune_stages)
                                       for m, s in specs.items()})
        self.width = sum(sizes[m] for m in specs)
        self.head = nn.Linear(self.width, n_classes)

    def encode(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([enc(x[m]) for m, enc in self.encoders.items()], 1)

    def forward(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> ModelOutput:
        z = self.encode(x)
        return ModelOutput(self.head(z), latents={"z": z})


class Guide(nn.Sequential):
    """G: an autoencoder-shaped MLP from z_I to z_S; the output layer is linear (a regression)."""

    def __init__(self, d_in: int, d_out: int, hidden: int, bottleneck: int, dropout: float):
        layers: list[nn.Module] = []
        for a, b in ((d_in, hidden), (hidden, bottleneck), (bottleneck, hidden)):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
        super().__init__(*layers, nn.Linear(hidden, d_out))


class Decoder(Net):
    """An MLP classifier on concatenated latents (D_c on [G(z_I), z_I]; the S+I decoder on
    [z_S, z_I]). The logits are the last linear layer's output, untouched."""

    def __init__(self, inputs: tuple[str, ...], d_in: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.inputs = inputs
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_classes))

    def forward(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None) -> ModelOutput:
        return ModelOutput(self.mlp(torch.cat([x[k] for k in self.inputs], 1)))


class GuidanceNet(nn.Module):
    """Every trained part; :meth:`infer` is the inference path, which reads only the inferior input."""

    def __init__(self, c_i: ModalityClassifier, c_s: ModalityClassifier, cfg: GuidanceConfig, n_classes: int):
        super().__init__()
        self.c_i, self.c_s = c_i, c_s
        self.guide = Guide(c_i.width, c_s.width, cfg.guide_hidden, cfg.bottleneck, cfg.guide_dropout)
        self.decoder = Decoder(("G(z_I)", "z_I"), c_s.width + c_i.width, cfg.decoder_hidden, n_classes,
                               cfg.decoder_dropout)
        self.joint = Decoder(("z_S", "z_I"), c_s.width + c_i.width, cfg.decoder_hidden, n_classes,
                             cfg.decoder_dropout)

    def infer(self, x: dict[str, torch.Tensor], head: str) -> ModelOutput:
        return self.from_latents(head, z_i=self.c_i.encode(x))

    def reference(self, x: dict[str, torch.Tensor], head: str) -> ModelOutput:
        return self.from_latents(head, z_i=None if head == "S" else self.c_i.encode(x), z_s=self.c_s.encode(x))

    def from_latents(self, head: str, z_i: torch.Tensor | None = None, z_s: torch.Tensor | None = None) -> ModelOutput:
        """``head``'s output from the encoders' latents (``z_s`` only for the reference heads)."""
        if head == "S":
            return ModelOutput(self.c_s.head(z_s), latents={"z_S": z_s})
        if head == "S+I":
            return ModelOutput(self.joint({"z_S": z_s, "z_I": z_i}).logits, latents={"z_S": z_s, "z_I": z_i})
        g = self.guide(z_i)
        if head == "I":
            logits = self.c_i.head(z_i)
        elif head == "G(I)":
            logits = self.c_s.head(g)
        else:
            logits = self.decoder({"G(z_I)": g, "z_I": z_i}).logits
        return ModelOutput(logits, latents={"z_I": z_i, "G(z_I)": g})


class _TaskStage(Net):
    """Training wrapper of C_I / C_S: the mean class-weighted CE over the method's target and the
    extra ``tasks`` (weights from the training rows' labels). The loop hands a loss only the
    target's labels, so the forward closure sets ``rows`` (the batch's sample indices) and the
    extra labels are looked up by row."""

    def __init__(self, clf: ModalityClassifier, y: torch.Tensor, extra: dict[str, tuple[torch.Tensor, int]],
                 train_rows: np.ndarray, val_rows: np.ndarray, weighted: bool):
        super().__init__()
        self.clf = clf
        self.heads = nn.ModuleDict({t: nn.Linear(clf.width, n) for t, (_, n) in extra.items()})
        self.labels = {t: v for t, (v, _) in extra.items()}
        tr = torch.as_tensor(train_rows)
        self.weights = {t: loop.class_weights(v[tr], n) if weighted else None for t, (v, n) in extra.items()}
        self.val_weight = loop.class_weights(y[tr], clf.head.out_features) if weighted else None
        self.val_rows = torch.as_tensor(val_rows)
        self.rows: torch.Tensor | None = None

    def forward(self, x, present) -> ModelOutput:
        return self.clf(x, present)

    def _extra_ce(self, z: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
        return [F.cross_entropy(head(z).float(), self.labels[t][rows].to(z.device),
                                weight=None if self.weights[t] is None else self.weights[t].to(z.device))
                for t, head in self.heads.items()]

    def loss(self, out, y, weight) -> tuple[torch.Tensor, dict]:
        terms = [F.cross_entropy(out.logits.float(), y, weight=weight), *self._extra_ce(out.latents["z"], self.rows)]
        return torch.stack(terms).mean(), {k: float(v.detach()) for k, v in zip(("ce", *self.heads), terms)}

    def validation_loss(self, out, y) -> torch.Tensor:
        """Mean class-weighted CE over all tasks on the validation rows (in the loop's order)."""
        terms = [F.cross_entropy(out.logits, y, weight=self.val_weight), *self._extra_ce(out.latents["z"], self.val_rows)]
        return torch.stack(terms).mean()


class _GuideStage(Net):
    """Training wrapper of G: MSE to z_S. C_S's frozen head on G(z_I) adds the G(I) metrics to the
    training history."""

    def __init__(self, guide: Guide, head_s: nn.Linear):
        super().__init__()
        self.guide, self.head_s = guide, head_s

    def forward(self, x, present) -> ModelOutput:
        g = self.guide(x["z_I"])
        return ModelOutput(self.head_s(g), latents={"G(z_I)": g, "z_S": x["z_S"]})

    def loss(self, out, y, weight) -> tuple[torch.Tensor, dict]:
        mse = self.validation_loss(out, y)
        return mse, {"mse": float(mse.detach())}

    def validation_loss(self, out, y) -> torch.Tensor:
        return F.mse_loss(out.latents["G(z_I)"].float(), out.latents["z_S"].float())


@dataclass
class _Reusable:
    """What :meth:`GuidanceMethod.retarget` reuses from a fit: the frozen latents of the training
    and validation rows (positions ``train`` / ``val`` in ``latents``), the split, the seed and
    the extra task heads of C_I and C_S. A model loaded from a checkpoint rebuilds it from the
    split and seed on its card and the data handed to ``retarget`` (see ``_rebuild_reusable``)."""

    latents: MultimodalDataset
    rows: np.ndarray
    train: np.ndarray
    val: np.ndarray
    split: Split
    seed: int
    task_heads: dict[str, nn.ModuleDict]


def freeze(module: nn.Module) -> None:
    """No more gradient updates, and dropout off whenever the module is used."""
    module.requires_grad_(False)
    module.eval()


@register_method("guidance", GuidanceConfig, family="guidance",
                 description="deep multimodal guidance: the inferior modality steered by a superior one "
                             "(needed only for training); predicts from the inferior modality alone")
class GuidanceMethod(Method):
    native_absence = "not used: the guided model predicts from its inferior modality alone"

    def __init__(self, specs: dict[str, ModalitySpec], classes: tuple[str, ...], config: GuidanceConfig):
        config = _resolve_roles(config, specs)
        super().__init__({m: specs[m] for m in (config.inferior, *config.superior)}, classes, config)
        self.inferior, self.superior = config.inferior, tuple(config.superior)
        self.net = self.build_net()
        self.stages: dict[str, loop.FitResult] = {}
        # the extra ``tasks`` heads of C_I and C_S ({"C_I": {task: Linear}, "C_S": ...}), which retarget uses
        self.task_heads: dict[str, nn.ModuleDict] = {}
        self._reusable: _Reusable | None = None
        # what a checkpoint keeps to rebuild ``_reusable``: seed, split and a digest of the G rows' data
        self._reuse_info: dict | None = None

    def build_net(self) -> GuidanceNet:
        cfg = self.config
        sizes = {m: int(cfg.latent_sizes.get(m, cfg.latent)) for m in self.specs}
        enc = (cfg.encoder, cfg.freeze_encoder, cfg.encoder_tune_stages)
        c_i = ModalityClassifier({self.inferior: self.specs[self.inferior]}, sizes, cfg.dropout, self.n_classes, *enc)
        c_s = ModalityClassifier({m: self.specs[m] for m in self.superior}, sizes, cfg.dropout, self.n_classes, *enc)
        return GuidanceNet(c_i, c_s, cfg, self.n_classes)

    def required_modalities(self) -> tuple[str, ...]:
        """The guided model predicts from the inferior modality alone, so a sample needs it."""
        return (self.inferior,)

    def predicts_from(self) -> tuple[str, ...]:
        return (self.inferior,)

    def module(self) -> nn.Module:
        """Everything a checkpoint must hold: the nets, the extra task heads and the input preparation."""
        return nn.ModuleDict({"prep": self.prep, "net": self.net, "task_heads": nn.ModuleDict(self.task_heads)})

    # ------------------------------------------------------------ checkpoint state
    def card_state(self) -> dict:
        """Per-stage fit numbers (no histories), the extra task heads' class counts (their
        weights are in ``module()``) and, for :meth:`retarget`, the seed, split and a digest of
        the data of the rows G and the decoders were trained on."""
        state = {"stages": {k: r.summary() for k, r in self.stages.items()},
                 "task_heads": {s: {t: int(h.out_features) for t, h in heads.items()}
                                for s, heads in self.task_heads.items()}}
        if self._reuse_info is not None:
            state["retarget"] = self._reuse_info
        return state

    def restore_card_state(self, state: dict) -> None:
        self.stages = {k: loop.FitResult.from_summary(v) for k, v in state.get("stages", {}).items()}
        widths = {"C_I": self.net.c_i.width, "C_S": self.net.c_s.width}
        self.task_heads = {s: nn.ModuleDict({t: nn.Linear(widths[s], int(n)) for t, n in heads.items()})
                           for s, heads in state.get("task_heads", {}).items()}
        self._reuse_info = state.get("retarget")
        self._reusable = None

    # ------------------------------------------------------------ training
    def _fit(self, data, split, seed, progress, callback) -> loop.FitResult:
        t0 = time.perf_counter()
        self.net = self.build_net()
        init_pretrained(self.net)
        self.module().to(self.device)
        has_i = data.present[self.inferior].numpy()
        has_s = np.logical_and.reduce([data.present[m].numpy() for m in self.superior])
        self.stages, task_heads = {}, {}
        self.task_heads, self._reusable, self._reuse_info = {}, None, None
        extra = {t: (data.targets[t].y, len(data.targets[t].classes)) for t in self._tasks(data)}
        for name, clf, ok in (("C_I", self.net.c_i, has_i), ("C_S", self.net.c_s, has_s)):
            tr, va = _rows(split.train, ok, name), _rows(split.val, ok, name)
            stage = _TaskStage(clf, data.y, extra, tr, va, self.config.train.class_weighted).to(self.device)
            fwd = self._stage_forward(stage, data, np.concatenate([tr, va]))
            self.stages[name] = loop.fit(stage, fwd, data, tr, va, self.config.train, self.device, seed,
                                         progress, callback)
            freeze(stage)
            task_heads[name] = stage.heads
        self.task_heads = task_heads
        tr, va = _rows(split.train, has_i & has_s, "G"), _rows(split.val, has_i & has_s, "G")
        rows = np.concatenate([tr, va])
        self._reuse_info = {"seed": int(seed), "rows_sha256": _rows_digest(data, rows),
                            "split": {"name": str(split.name), "seed": int(split.seed),
                                      **{k: np.asarray(getattr(split, k)).astype(int).tolist()
                                         for k in ("train", "val", "test")}}}
        lat = self._latent_data(data, rows, self._encode(data, rows))
        local_tr, local_va = np.arange(len(tr)), np.arange(len(tr), len(rows))
        guide = _GuideStage(self.net.guide, self.net.c_s.head)
        self.stages["G"] = loop.fit(guide, _raw_forward(guide), lat, local_tr, local_va, self.config.guide_train,
                                    self.device, seed, progress, callback, params=list(self.net.guide.parameters()))
        freeze(self.net.guide)
        lat = self._with_guided(data, rows, lat)
        self._reusable = _Reusable(lat, rows, local_tr, local_va, split, seed, task_heads)
        return self._fit_decoders(lat, local_tr, local_va, seed, progress, callback, t0)

    def _stage_forward(self, stage: _TaskStage, data: MultimodalDataset, rows: np.ndarray) -> Callable:
        """The training forward of C_I or C_S: on the frozen units' cached output where the
        classifier's ImageNet encoders have such units (:mod:`core.models.prefix_cache`)."""
        encoders = cacheable(stage.clf.encoders, self.config.train)
        if not encoders:
            def fwd(batch, train):
                stage.rows = batch["index"]
                return stage(self.prepared(batch), batch["present"])

            return fwd
        cache = PrefixCache(encoders, data, self.prep, rows, self.device)
        flips = self.config.train.augment

        def cached(batch, train):
            stage.rows = batch["index"]
            rest = self.prep({m: v for m, v in batch["x"].items() if m not in encoders})
            with cache.active():
                return stage(cache.inputs(batch["index"], rest, flips=train and flips), batch["present"])

        return cached

    def _fit_decoders(self, lat, tr, va, seed, progress, callback, t0) -> loop.FitResult:
        for name, dec in (("D_c", self.net.decoder), ("S+I", self.net.joint)):
            self.stages[name] = loop.fit(dec, _raw_forward(dec), lat, tr, va, self.config.decoder_train, self.device,
                                         seed, progress, callback)
            freeze(dec)
        d_c = self.stages["D_c"]
        history = [{"stage": s, **h} for s, r in self.stages.items() for h in r.history]
        return loop.FitResult(d_c.best_epoch, d_c.best_score, sum(r.epochs_run for r in self.stages.values()),
                              time.perf_counter() - t0, history)

    def retarget(self, target: str, data: MultimodalDataset, *, progress: bool = False,
                 callback=None) -> "GuidanceMethod":
        """A guidance model for label column ``target`` of ``data`` that reuses this model's frozen
        C_I, C_S (with their ``target`` heads, trained jointly through ``config.tasks``), G and
        split; only D_c and the S+I decoder are trained. Saves retraining encoders per target.

        A model loaded from a checkpoint retargets too: its card keeps the split and seed, and the
        frozen latents are computed again from ``data``, which must hold the rows it was trained
        on (checked by a digest of their ids, presence and values)."""
        if target not in self.task_heads.get("C_I", {}):
            if target in self.config.tasks and self.is_fitted:
                raise MMXError(f"retarget to {target!r}: this guidance model lacks its {target!r} heads (a checkpoint "
                               f"written before task heads were saved); refit it")
            raise MMXError(f"retarget to {target!r} needs a guidance model fitted with {target!r} in its tasks "
                           f"(this one has tasks {list(self.config.tasks)})")
        t0 = time.perf_counter()
        tdata = data.with_target(target)
        if self._reusable is None:  # loaded from a checkpoint: the frozen latents are computed again
            self._reusable = self._rebuild_reusable(tdata)
        r = self._reusable
        seed_everything(r.seed)  # the new decoders' initial weights
        new = GuidanceMethod(self.specs, tdata.classes, self.config)
        new.check_data(tdata)
        lat = dataclasses.replace(r.latents, y=tdata.y[torch.as_tensor(r.rows)], classes=tdata.classes, _hash=None)
        new._reusable = dataclasses.replace(r, latents=lat)
        new.prep, new.device = self.prep, self.device
        for mine, theirs in ((new.net.c_i, self.net.c_i), (new.net.c_s, self.net.c_s)):
            mine.encoders = theirs.encoders
        new.net.c_i.head = r.task_heads["C_I"][target]
        new.net.c_s.head = r.task_heads["C_S"][target]
        new.net.guide = self.net.guide
        new.net.to(self.device)
        new.task_heads, new._reuse_info = self.task_heads, self._reuse_info
        new.stages = {k: v for k, v in self.stages.items() if k in ("C_I", "C_S", "G")}
        new.fit_result = new._fit_decoders(lat, r.train, r.val, r.seed, progress, callback, t0)
        return new

    def _rebuild_reusable(self, data: MultimodalDataset) -> _Reusable:
        """``_reusable`` of a model loaded from a checkpoint: the G rows from the card's split, and
        their latents computed again by the frozen C_I, C_S and G exactly as :meth:`_fit` did.
        ``data`` must hold the same rows (ids, values, presence) the model was trained on."""
        info = self._reuse_info
        if info is None:
            raise MMXError("retarget needs the split this guidance model was trained on, and its checkpoint "
                           "predates storing it; refit the model")
        data = self.check_data(data, classes=False)
        sp = info["split"]
        split = Split(sp["name"], *(np.asarray(sp[k], dtype=np.int64) for k in ("train", "val", "test")),
                      int(sp.get("seed", 0)))
        used = np.concatenate([split.train, split.val])
        if len(used) and int(used.max()) >= len(data):
            raise MMXError(f"retarget: data {data.name!r} has {len(data)} samples, fewer than the rows this guidance "
                           f"model was trained on")
        has_i = data.present[self.inferior].numpy()
        has_s = np.logical_and.reduce([data.present[m].numpy() for m in self.superior])
        tr, va = _rows(split.train, has_i & has_s, "G"), _rows(split.val, has_i & has_s, "G")
        rows = np.concatenate([tr, va])
        if _rows_digest(data, rows) != info["rows_sha256"]:
            raise MMXError(f"retarget: the training rows of data {data.name!r} differ (ids, values or presence) from "
                           f"those this guidance model was trained on; pass the data it was fitted with")
        lat = self._with_guided(data, rows, self._latent_data(data, rows, self._encode(data, rows)))
        return _Reusable(lat, rows, np.arange(len(tr)), np.arange(len(tr), len(rows)), split, int(info["seed"]),
                         self.task_heads)

    @torch.no_grad()
    def _with_guided(self, data: MultimodalDataset, rows: np.ndarray, lat: MultimodalDataset) -> MultimodalDataset:
        """The latent dataset plus G(z_I) from the frozen G (the decoders' input)."""
        mapped = self.net.guide(lat.modalities["z_I"].to(self.device)).float().cpu()
        return self._latent_data(data, rows, {**lat.modalities, "G(z_I)": mapped})

    def _tasks(self, data: MultimodalDataset) -> tuple[str, ...]:
        unknown = [t for t in self.config.tasks if t not in data.targets]
        if unknown:
            raise MMXError(f"guidance tasks {unknown} are not label columns of {data.name!r} ({list(data.targets)})")
        return tuple(self.config.tasks)

    @torch.no_grad()
    def _encode(self, data: MultimodalDataset, rows: np.ndarray) -> dict[str, torch.Tensor]:
        def fwd(batch, train):
            x = self.prepared(batch)
            z_i = self.net.c_i.encode(x)
            return ModelOutput(self.net.c_i.head(z_i), latents={"z_I": z_i, "z_S": self.net.c_s.encode(x)})

        out = loop.predict_outputs(self.net, fwd, data, rows, self.device, self.config.train.batch_size)
        return out.latents

    @staticmethod
    def _latent_data(data: MultimodalDataset, rows: np.ndarray, latents: dict[str, torch.Tensor]) -> MultimodalDataset:
        """The frozen latents of ``rows`` as a dataset, so the shared loop trains G and the decoders."""
        r = torch.as_tensor(rows)
        specs = {k: ModalitySpec(k, "omics", tuple(f"{k}[{j}]" for j in range(v.shape[1]))) for k, v in latents.items()}
        return MultimodalDataset(
            name=f"{data.name} latents", modalities=dict(latents),
            present={k: torch.ones(len(rows), dtype=torch.bool) for k in latents}, y=data.y[r],
            classes=data.classes, groups=data.groups[rows], ids=data.ids[rows], specs=specs)

    # ------------------------------------------------------------ inference
    def predict(self, data: MultimodalDataset, idx: np.ndarray | None = None, *,
                mask: dict | None = None, head: str = "G(I)+I") -> Prediction:
        """Class probabilities from the inferior modality alone (``data`` need not hold the
        superior one). ``head``: ``G(I)+I`` (guided), ``G(I)`` or ``I`` (unguided)."""
        if head not in INFERENCE_HEADS:
            if head in REFERENCE_HEADS:
                raise MMXError(f"guidance inference uses only the inferior modality {self.inferior!r}; head {head!r} "
                               f"needs the superior modality {list(self.superior)} (use reference_predict to "
                               f"evaluate it)")
            raise MMXError(f"unknown guidance head {head!r}; heads are {list(INFERENCE_HEADS)}")
        other = [m for m in (mask or {}) if m != self.inferior]
        if other:
            raise MMXError(f"cannot mask {other}: guidance inference reads only {self.inferior!r}")
        data, idx = self._rows_with(data, idx, (self.inferior,))
        masks = parse_mask(mask, {self.inferior: self.specs[self.inferior]})
        out = self._predict_outputs(data, idx, masks, head)
        return Prediction(torch.softmax(out.logits.float(), 1).numpy(), out)

    def reference_predict(self, data: MultimodalDataset, idx: np.ndarray | None = None, *,
                          head: str = "S") -> Prediction:
        """The reference rows, for evaluation only: ``S`` (C_S) or ``S+I`` (a decoder on [z_S, z_I]).
        They read the superior modality, which guidance exists to do without at inference."""
        if head not in REFERENCE_HEADS:
            raise MMXError(f"reference heads are {list(REFERENCE_HEADS)}, not {head!r}")
        needed = self.superior if head == "S" else (self.inferior, *self.superior)
        data, idx = self._rows_with(data, idx, needed)
        self.module().to(self.device)
        out = loop.predict_outputs(self.net, lambda b, t: self.net.reference(self.prepared(b), head), data, idx,
                                   self.device, self.config.train.batch_size)
        return Prediction(torch.softmax(out.logits.float(), 1).numpy(), out)

    def latents(self, data: MultimodalDataset, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """z_I and z_S of rows ``idx`` (each needs every modality). Models retargeted from one
        fit share its C_I and C_S, so these latents serve all of their heads
        (:meth:`head_probabilities`): the images pass the encoders once."""
        data, idx = self._rows_with(data, idx, (self.inferior, *self.superior))
        self.module().to(self.device)
        return self._encode(data, idx)

    @torch.no_grad()
    def head_probabilities(self, latents: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Class probabilities of every head, inference and reference, from :meth:`latents`."""
        self.net.eval()
        z = {k: latents[k].to(self.device) for k in ("z_I", "z_S")}
        return {h: torch.softmax(self.net.from_latents(h, z["z_I"], z["z_S"]).logits.float(), 1).cpu().numpy()
                for h in (*INFERENCE_HEADS, *REFERENCE_HEADS)}

    def _predict_outputs(self, data, idx, masks, head: str = "G(I)+I") -> ModelOutput:
        self.module().to(self.device)
        return loop.predict_outputs(self.net, lambda b, t: self.net.infer(self.prepared(b, masks), head), data, idx,
                                    self.device, self.config.train.batch_size)

    def _rows_with(self, data: MultimodalDataset, idx, modalities: tuple[str, ...]):
        """Rows ``idx`` of ``data`` (all must have ``modalities``), reduced to those modalities and
        checked against the method; returned with their new indices."""
        missing = [m for m in modalities if m not in data.specs]
        if missing:
            raise MMXError(f"data {data.name!r} lacks modalities {missing} that this guidance head reads")
        for m in modalities:
            s, d = self.specs[m], data.specs[m]
            if (s.kind, s.feature_names, s.image_shape) != (d.kind, d.feature_names, d.image_shape):
                raise MMXError(f"modality {m!r} of data {data.name!r} does not match the method's "
                               f"(features or image shape differ)")
        if tuple(data.classes) != self.classes:
            raise MMXError(f"data classes {data.classes} differ from the method's {self.classes}")
        idx = np.arange(len(data)) if idx is None else np.asarray(idx)
        lacking = np.zeros(len(idx), dtype=bool)
        for m in modalities:
            lacking |= ~data.present[m][torch.as_tensor(idx)].numpy()
        if lacking.any():
            ids = ", ".join(map(str, data.ids[idx[lacking]][:3]))
            raise MMXError(f"{int(lacking.sum())} requested samples of {data.name!r} lack {list(modalities)} "
                           f"(e.g. {ids}); leave them out")
        return data.subset(idx).select(list(modalities)), np.arange(len(idx))


def _rows_digest(data: MultimodalDataset, rows: np.ndarray) -> str:
    """sha256 of the ids, presence and values of ``rows`` (every modality of ``data``)."""
    h = hashlib.sha256()
    r = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    for m in sorted(data.modalities):
        h.update(m.encode())
        h.update(data.modalities[m][r].contiguous().numpy().tobytes())
        h.update(data.present[m][r].numpy().tobytes())
    h.update("\x00".join(map(str, data.ids[np.asarray(rows)])).encode())
    return h.hexdigest()


def _raw_forward(net: nn.Module):
    """Forward for the latent datasets: they are already the nets' inputs (no scaling)."""
    return lambda batch, train: net(batch["x"], batch["present"])


def _rows(idx: np.ndarray, ok: np.ndarray, stage: str) -> np.ndarray:
    rows = np.asarray(idx)[ok[np.asarray(idx)]]
    if len(rows) == 0:
        raise MMXError(f"guidance stage {stage}: no training/validation rows have the modalities it needs")
    return rows


def _resolve_roles(config: GuidanceConfig, specs: dict[str, ModalitySpec]) -> GuidanceConfig:
    """Fill in the default roles (first modality inferior, the others superior) and check them."""
    names = list(specs)
    inferior = config.inferior or (names[0] if names else "")
    superior = config.superior
    if isinstance(superior, str):  # from the command line: "rna,protein"
        superior = tuple(s for s in superior.split(",") if s)
    superior = tuple(superior) or tuple(m for m in names if m != inferior)
    if inferior not in specs:
        raise MMXError(f"guidance: inferior modality {inferior!r} is not one of {names}")
    bad = [m for m in superior if m not in specs or m == inferior]
    if not superior or bad:
        raise MMXError(f"guidance needs superior modalities other than the inferior {inferior!r} among {names}"
                       + (f"; {bad} are not" if bad else ""))
    return dataclasses.replace(config, inferior=inferior, superior=superior)

"""The method interface every algorithm implements (one call shape, shared behaviour).

``method.fit(data, split, seed=...)`` then ``method.predict(data, idx, mask=...)``. Input
preparation (scaling with training statistics), modality/feature checks and test-time
masking live here once; a subclass supplies only what makes it different.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from core.data.dataset import ModalitySpec, MultimodalDataset
from core.data.splits import Split
from core.errors import MMXError
from core.models.absent import check_settings, drop_modalities, fill_absent
from core.models.encoders import init_pretrained
from core.models.masking import Mask, apply_mask, check_rows, parse_mask, uses_topk
from core.models.prep import InputPrep
from core.train import loop
from core.train.device import resolve_device, seed_everything
from core.train.output import ModelOutput


@dataclass
class MethodConfig:
    """Settings every method has."""

    scaling: str = "minmax"  # omics scaling fitted on training rows: minmax | standard | none


@dataclass
class DeepConfig(MethodConfig):
    """Settings of methods trained with :func:`core.train.loop.fit`."""

    train: loop.TrainConfig = field(default_factory=loop.TrainConfig)
    missing: str = "native"  # absent modalities: native | zeros | mean | gray (see core.models.absent)
    modality_dropout: float = 0.0  # training only: drop each observed modality with this probability
    encoder: str = "small"  # image encoder: small | resnet | pretrained | efficientnet_lite0 (core.models.encoders)
    freeze_encoder: bool = False  # pretrained / ImageNet encoders only: keep the trunk's starting weights fixed
    encoder_tune_stages: int | None = None  # ImageNet encoders: train only the last N trunk units (None: all)


@dataclass
class Prediction:
    """Class probabilities (``N x C``) and the forward pass's explain outputs."""

    proba: np.ndarray
    output: ModelOutput

    @property
    def label(self) -> np.ndarray:
        return self.proba.argmax(1)


class Method(ABC):
    """Base of all methods. Subclasses implement :meth:`_fit` and :meth:`_forward_prepared`."""

    name: ClassVar[str] = "method"
    Config: ClassVar[type] = MethodConfig
    #: modality kinds the method accepts; checked at construction
    kinds: ClassVar[tuple[str, ...]] = ("omics", "image")
    #: what the method does with a modality a sample lacks (shown wherever a prediction is made without one)
    native_absence: ClassVar[str] = "its inputs are zeroed and flagged absent"

    def __init__(self, specs: dict[str, ModalitySpec], classes: tuple[str, ...], config: MethodConfig):
        if not specs:
            raise MMXError(f"method {self.name!r} needs at least one modality")
        bad = [m for m, s in specs.items() if s.kind not in self.kinds]
        if bad:
            raise MMXError(f"method {self.name!r} accepts {self.kinds} modalities, not {bad}")
        self.specs = dict(specs)
        self.classes = tuple(classes)
        self.config = config
        self.prep = InputPrep(self.specs, config.scaling)
        self.device = torch.device("cpu")
        self.fit_result: loop.FitResult | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def required_modalities(self) -> tuple[str, ...]:
        """Modalities a sample must have to be predicted (none by default: a method fills or
        skips an absent modality itself). A caller scoring many samples leaves the others out."""
        return ()

    def predicts_from(self) -> tuple[str, ...]:
        """Modalities a prediction reads (all by default); only these can be uploaded or masked."""
        return tuple(self.specs)

    def absence_handling(self) -> str:
        """How a prediction treats an absent modality: the method's own handling, or the fill
        its ``missing`` setting names (the network then cannot tell the fill from data)."""
        fill = getattr(self.config, "missing", "native")
        if fill == "native":
            return self.native_absence
        what = {"zeros": "zeros (after scaling)", "mean": "the training mean",
                "gray": "uniform gray (images) or zeros (omics)"}[fill]
        return f"filled with {what}, and the model is told it is present"

    @property
    def is_fitted(self) -> bool:
        """True after :meth:`fit` and after :func:`core.checkpoint.load_checkpoint` (which restores
        ``fit_result`` from the card): every prediction and explanation call may then be made."""
        return self.fit_result is not None

    # ------------------------------------------------------------ checkpoint hooks
    # A checkpoint holds :meth:`weights` (tensors, in safetensors), :meth:`artefacts` (non-tensor
    # parts in a format that runs no code on load, e.g. skops) and a JSON card with
    # :meth:`card_state`. Loading builds the method from the card, calls :meth:`restore_card_state`
    # (which builds any module whose shape only a fit decides), then :meth:`load_artefacts` and
    # :meth:`load_weights` (strict: every tensor must fit).
    def module(self) -> nn.Module:
        """The torch modules of a fitted model: the input preparation, plus a deep method's nets."""
        return nn.ModuleDict({"prep": self.prep})

    def weights(self) -> dict[str, torch.Tensor]:
        """Every tensor of a fitted model (by default ``module()``'s state)."""
        return self.module().state_dict()

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.module().load_state_dict(state, strict=True)

    def artefacts(self) -> dict[str, bytes]:
        """Files beside the weights (name -> content); none by default."""
        return {}

    def load_artefacts(self, files: dict[str, bytes]) -> None:
        if files:
            raise MMXError(f"method {self.name!r} keeps no files besides its weights, got {sorted(files)}")

    def card_state(self) -> dict:
        """JSON-serialisable state of a fitted model that is not in its weights (none by default)."""
        return {}

    def restore_card_state(self, state: dict) -> None:
        """Restore what :meth:`card_state` wrote, on a freshly built model, before its weights load."""

    def place(self, device: str | torch.device) -> None:
        """Move a loaded model to ``device`` for prediction."""
        self.device = torch.device(device)
        self.module().to(self.device).eval()

    # ------------------------------------------------------------ public API
    def fit(self, data: MultimodalDataset, split: Split, *, seed: int = 0, device: str = "auto",
            progress: bool = False, callback: Callable[[int, int, dict], None] | None = None) -> loop.FitResult:
        """Fit on ``split.train`` (selecting on ``split.val``); returns what the loop recorded."""
        data = self.check_data(data)
        seed_everything(seed)
        self.device = resolve_device(device)
        train_cfg = getattr(self.config, "train", None)
        tr = torch.as_tensor(loop.training_rows(split.train, split.val, train_cfg))
        self.prep.fit(data.modalities, data.present, tr)
        self.fit_result = self._fit(data, split, seed, progress, callback)
        return self.fit_result

    def predict(self, data: MultimodalDataset, idx: np.ndarray | None = None, *,
                mask: dict[str, str | Mask] | None = None) -> Prediction:
        """Probabilities and explain outputs for samples ``idx`` (all when None), with the
        modalities in ``mask`` masked at test time (a :class:`~core.models.masking.RowMasks`
        masks each row of ``data`` its own way)."""
        data = self.check_data(data)
        idx = np.arange(len(data)) if idx is None else np.asarray(idx)
        masks = parse_mask(mask, self.specs, getattr(self.config, "patch_size", None))
        check_rows(masks, len(data))
        out = self._predict_outputs(data, idx, masks)
        return Prediction(torch.softmax(out.logits.float(), 1).numpy(), out)

    def check_data(self, data: MultimodalDataset, *, classes: bool = True) -> MultimodalDataset:
        """Select this method's modalities from ``data`` and check features, shapes and (unless
        ``classes`` is False) classes."""
        missing = [m for m in self.specs if m not in data.specs]
        if missing:
            raise MMXError(f"data {data.name!r} lacks modalities {missing} that method {self.name!r} was built for")
        data = data.select(list(self.specs))
        for m, s in self.specs.items():
            d = data.specs[m]
            if s.kind != d.kind or s.feature_names != d.feature_names or s.image_shape != d.image_shape:
                raise MMXError(f"modality {m!r} of data {data.name!r} does not match the method's "
                               f"(features or image shape differ)")
        if classes and tuple(data.classes) != self.classes:
            raise MMXError(f"data classes {data.classes} differ from the method's {self.classes}")
        return data

    # ------------------------------------------------------------ shared helpers
    def prepared(self, batch: dict, masks: dict[str, Mask] | None = None,
                 feature_maps: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Scaled inputs of a batch, masked where asked (per-row masks by the batch's data rows)."""
        x = self.prep(batch["x"])
        return apply_mask(x, masks, self.prep.training_mean, feature_maps, batch.get("index")) if masks else x

    @abstractmethod
    def _fit(self, data: MultimodalDataset, split: Split, seed: int, progress: bool, callback) -> loop.FitResult:
        ...

    @abstractmethod
    def _predict_outputs(self, data: MultimodalDataset, idx: np.ndarray, masks: dict[str, Mask]) -> ModelOutput:
        ...


class Net(nn.Module):
    """A method's network: ``forward(x, present) -> ModelOutput`` on prepared inputs, and a
    loss (default: class-weighted cross-entropy on the fused logits)."""

    def loss(self, out: ModelOutput, y: torch.Tensor, weight: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        ce = nn.functional.cross_entropy(out.logits.float(), y, weight=weight)
        return ce, {"ce": float(ce.detach())}


class BranchedNet(Net):
    """A net whose modalities meet only at its fusion layer: ``forward`` fuses each modality's
    :meth:`branch`. So a question that varies one modality of a sample (masked variants, counterfactual
    masks) encodes the other modalities once (:meth:`core.explain.attributions.Differentiable.varying`)."""

    encoders: nn.ModuleDict
    classifier: nn.Module

    def new_output(self, present: dict[str, torch.Tensor]) -> ModelOutput:
        return ModelOutput(logits=torch.empty(0))

    def branch(self, m: str, x: torch.Tensor, present: torch.Tensor, out: ModelOutput | None = None) -> torch.Tensor:
        """Modality ``m``'s latent as fusion gets it (zero where absent); what else it yields (maps,
        weights) goes into ``out`` when one is given."""
        raise NotImplementedError

    def fuse(self, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits from every modality's latent, in the nets' modality order."""
        return self.classifier(torch.cat([latents[m] for m in self.encoders], 1))

    def forward(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> ModelOutput:
        out = self.new_output(present)
        for m in self.encoders:
            out.latents[m] = self.branch(m, x[m], present[m], out)
        out.logits = self.fuse(out.latents)
        return out


class TorchMethod(Method):
    """A method whose model is one :class:`Net` trained by the shared loop."""

    Config: ClassVar[type] = DeepConfig
    #: train on inputs prepared once and kept on the device (:class:`core.train.loop.ResidentRows`);
    #: only for methods whose training forward reads its batch through :meth:`model_inputs`
    resident_inputs: ClassVar[bool] = False

    def __init__(self, specs, classes, config):
        super().__init__(specs, classes, config)
        check_settings(config.missing, config.modality_dropout)
        self.net = self.build_net()

    @abstractmethod
    def build_net(self) -> Net:
        ...

    def module(self) -> nn.Module:
        """Everything a checkpoint must hold: the net and the input preparation."""
        return nn.ModuleDict({"prep": self.prep, "net": self.net})

    def model_inputs(self, batch: dict, masks: dict[str, Mask] | None = None,
                     feature_maps: dict[str, torch.Tensor] | None = None, train: bool = False) -> tuple[dict, dict]:
        """Prepared inputs and presence as the net sees them: modality dropout while training,
        then absent modalities filled per ``config.missing``."""
        if train and self.config.modality_dropout > 0:
            batch = drop_modalities(batch, self.config.modality_dropout)
        x = batch["x"] if batch.get("prepared") else self.prepared(batch, masks, feature_maps)
        return fill_absent(x, batch["present"], self.config.missing, self.specs, self.prep.training_mean)

    def forward(self, batch: dict, train: bool = False, masks: dict[str, Mask] | None = None) -> ModelOutput:
        return self.net(*self.model_inputs(batch, masks, train=train))

    def _fit(self, data, split, seed, progress, callback) -> loop.FitResult:
        self.net = self.build_net()  # fresh weights drawn under the seed just set
        init_pretrained(self.net)
        self.module().to(self.device)
        forward, prepare = self.training_forward(data, np.union1d(split.train, split.val))
        return loop.fit(self.net, forward, data, split.train, split.val, self.config.train, self.device,
                        seed, progress, callback, prepare=prepare)

    def training_forward(self, data: MultimodalDataset, rows: np.ndarray) -> tuple[Callable, Callable | None]:
        """The forward pass training runs on ``rows`` of ``data`` and the preparation the loop may
        apply once to resident rows (:func:`core.train.loop.fit`): by default :meth:`forward`, and the
        input preparation unless modality dropout (which zeroes raw inputs) needs the per-step path."""
        prepare = self.prep if self.resident_inputs and not self.config.modality_dropout else None
        return self.forward, prepare

    def _predict_outputs(self, data, idx, masks) -> ModelOutput:
        self.module().to(self.device)
        bs = self.config.train.batch_size
        maps = None
        if uses_topk(masks):  # rank patches by the unmasked map first
            maps = loop.predict_outputs(self.net, self.forward, data, idx, self.device, bs).feature_maps
            pos = torch.full((len(data),), -1, dtype=torch.long)
            pos[torch.as_tensor(idx)] = torch.arange(len(idx))

        def fwd(batch: dict, train: bool) -> ModelOutput:
            fm = None if maps is None else {m: v[pos[batch["index"]]].to(self.device) for m, v in maps.items()}
            return self.net(*self.model_inputs(batch, masks, fm))

        return loop.predict_outputs(self.net, fwd, data, idx, self.device, bs)

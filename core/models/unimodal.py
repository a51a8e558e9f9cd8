"""``unimodal``: any registered method trained on one modality alone — the single-modality
baseline of a missing-modality experiment.

It trains on the training samples that have the modality and predicts the samples that have
it. A sample without the modality gets the training class frequencies (there is nothing to
look at), so the row is scored on the same test samples as every other method.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from core.data.splits import Split
from core.errors import MMXError
from core.models.base import Method, MethodConfig
from core.models.registry import get_method, register_method
from core.train import loop
from core.train.output import ModelOutput


@dataclass
class UnimodalConfig(MethodConfig):
    modality: str = ""  # the modality used ("" = the first one)
    base: str = "late_mlp"  # the registered method trained on it
    base_config: dict = field(default_factory=dict)  # that method's settings


@register_method("unimodal", UnimodalConfig, family="baseline",
                 description="one modality only: a base method on the samples that have it; "
                             "samples without it get the training class frequencies")
class Unimodal(Method):
    def __init__(self, specs, classes, config: UnimodalConfig):
        super().__init__(specs, classes, config)
        self.modality = config.modality or next(iter(specs))
        if self.modality not in specs:
            raise MMXError(f"unimodal: modality {self.modality!r} is not one of {list(specs)}")
        if config.base == self.name:
            raise MMXError("unimodal: the base method cannot be 'unimodal' itself")
        self.inner = get_method(config.base, {self.modality: specs[self.modality]}, classes, **config.base_config)
        self.prior = torch.full((self.n_classes,), 1.0 / self.n_classes)

    def _fit(self, data, split, seed, progress, callback) -> loop.FitResult:
        have = data.present[self.modality].numpy()
        position = np.cumsum(have) - 1  # row number among the samples that have the modality

        def keep(idx: np.ndarray) -> np.ndarray:
            return position[idx[have[idx]]]

        inner_split = Split(split.name, keep(split.train), keep(split.val), keep(split.test), split.seed)
        if not len(inner_split.train) or not len(inner_split.val):
            raise MMXError(f"unimodal: no training or validation sample has modality {self.modality!r}")
        counts = torch.bincount(data.y[torch.as_tensor(split.train)], minlength=self.n_classes).float()
        self.prior = counts / counts.sum()
        sub = data.subset(np.flatnonzero(have)).select([self.modality])
        return self.inner.fit(sub, inner_split, seed=seed, device=str(self.device), progress=progress,
                              callback=callback)

    # ------------------------------------------------------------ checkpoint: the inner method's parts, prefixed
    def weights(self) -> dict[str, torch.Tensor]:
        return {**super().weights(), "prior": self.prior, **{f"inner.{k}": v for k, v in self.inner.weights().items()}}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        if "prior" not in state or state["prior"].shape != self.prior.shape:
            raise MMXError("unimodal weights lack the class prior or it has the wrong size")
        self.prior = state["prior"].float()
        self.inner.load_weights({k[6:]: v for k, v in state.items() if k.startswith("inner.")})
        super().load_weights({k: v for k, v in state.items() if k != "prior" and not k.startswith("inner.")})

    def artefacts(self) -> dict[str, bytes]:
        return {f"inner.{k}": v for k, v in self.inner.artefacts().items()}

    def load_artefacts(self, files: dict[str, bytes]) -> None:
        super().load_artefacts({k: v for k, v in files.items() if not k.startswith("inner.")})
        self.inner.load_artefacts({k[6:]: v for k, v in files.items() if k.startswith("inner.")})

    def card_state(self) -> dict:
        return {"inner": self.inner.card_state(), "inner_fit": self.inner.fit_result.summary()}

    def restore_card_state(self, state: dict) -> None:
        self.inner.restore_card_state(state["inner"])
        self.inner.fit_result = loop.FitResult.from_summary(state["inner_fit"])

    def place(self, device) -> None:
        super().place(device)
        self.inner.place(device)

    def _predict_outputs(self, data, idx, masks) -> ModelOutput:
        have = data.present[self.modality].numpy()[idx]
        proba = self.prior.expand(len(idx), -1).clone()
        if have.any():
            sub = data.subset(idx[have]).select([self.modality])
            mask = {m: s for m, s in masks.items() if m == self.modality}
            proba[torch.from_numpy(have)] = torch.from_numpy(self.inner.predict(sub, mask=mask).proba).float()
        return ModelOutput(torch.log(proba.clamp(min=1e-12)))

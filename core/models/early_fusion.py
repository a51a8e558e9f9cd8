"""Early fusion with scikit-learn: concatenate every modality's features, then one classifier.

Features are the method's prepared inputs (omics scaled with training statistics; images
average-pooled to a small grid and flattened); a missing modality contributes zeros. The
pipeline's standardisation is fitted on the training rows only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.models.base import Method, MethodConfig
from core.models.output import ModelOutput
from core.models.registry import register_method
from core.train import loop
from core.train.loop import iterate


@dataclass
class EarlyFusionConfig(MethodConfig):
    image_grid: int = 8  # images are average-pooled to grid x grid per channel


class SklearnMethod(Method):
    """Shared behaviour of the scikit-learn early-fusion methods; subclasses give the estimator."""

    def estimator(self, seed: int):
        raise NotImplementedError

    def features(self, data, idx, masks=None) -> np.ndarray:
        rows = []
        for chunk in iterate(np.asarray(idx), 512):
            b = data.batch(chunk)
            x = self.prepared(b, masks)
            parts = []
            for m, s in self.specs.items():
                v = x[m]
                if s.kind == "image":
                    v = F.adaptive_avg_pool2d(v, self.config.image_grid).flatten(1)
                parts.append(v * b["present"][m][:, None].float())
            rows.append(torch.cat(parts, 1).numpy())
        return np.concatenate(rows)

    def _fit(self, data, split, seed, progress, callback) -> loop.FitResult:
        import time

        t0 = time.perf_counter()
        self.model = make_pipeline(StandardScaler(), self.estimator(seed))
        self.model.fit(self.features(data, split.train), data.y[torch.as_tensor(split.train)].numpy())
        return loop.FitResult(best_epoch=0, best_score=float("nan"), epochs_run=1, seconds=time.perf_counter() - t0)

    def _predict_outputs(self, data, idx, masks) -> ModelOutput:
        p = np.zeros((len(idx), self.n_classes))
        p[:, self.model.classes_] = self.model.predict_proba(self.features(data, idx, masks))
        return ModelOutput(torch.log(torch.from_numpy(p).float().clamp(min=1e-12)))


@dataclass
class LogRegConfig(EarlyFusionConfig):
    C: float = 1.0
    max_iter: int = 3000


@register_method("early_lr", LogRegConfig, family="baseline",
                 description="early fusion: concatenated features, standardised, logistic regression")
class EarlyLogReg(SklearnMethod):
    def estimator(self, seed: int):
        return LogisticRegression(C=self.config.C, max_iter=self.config.max_iter, random_state=seed)

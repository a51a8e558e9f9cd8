"""Early fusion with scikit-learn: concatenate every modality's features, then one classifier.

Features are the method's prepared inputs (omics scaled with training statistics; images
average-pooled to a small grid and flattened); a missing modality contributes zeros. The
pipeline's standardisation is fitted on the training rows only. Methods: ``early_knn``,
``early_lr``, ``early_mlp``, ``early_rf``, ``early_svm`` (the seed study's KNN, LR, NN, RF and
SVM rows); all give class probabilities and go through the same fit / predict / mask calls
as the deep methods.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from core.models.base import Method, MethodConfig
from core.models.registry import register_method
from core.train import loop
from core.train.loop import iterate
from core.train.output import ModelOutput


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


@dataclass
class KNNConfig(EarlyFusionConfig):
    n_neighbors: int = 5
    weights: str = "uniform"  # uniform | distance


@register_method("early_knn", KNNConfig, family="baseline",
                 description="early fusion: concatenated features, standardised, k-nearest neighbours")
class EarlyKNN(SklearnMethod):
    def estimator(self, seed: int):
        return KNeighborsClassifier(n_neighbors=self.config.n_neighbors, weights=self.config.weights)


@dataclass
class MLPConfig(EarlyFusionConfig):
    hidden: tuple[int, ...] = (100,)
    alpha: float = 1e-4  # L2 penalty
    max_iter: int = 500


@register_method("early_mlp", MLPConfig, family="baseline",
                 description="early fusion: concatenated features, standardised, multilayer perceptron (scikit-learn)")
class EarlyMLP(SklearnMethod):
    def estimator(self, seed: int):
        return MLPClassifier(hidden_layer_sizes=tuple(self.config.hidden), alpha=self.config.alpha,
                             max_iter=self.config.max_iter, random_state=seed)


@dataclass
class ForestConfig(EarlyFusionConfig):
    n_estimators: int = 500
    max_features: str = "sqrt"
    n_jobs: int = 1


@register_method("early_rf", ForestConfig, family="baseline",
                 description="early fusion: concatenated features, random forest")
class EarlyRF(SklearnMethod):
    def estimator(self, seed: int):
        return RandomForestClassifier(n_estimators=self.config.n_estimators, max_features=self.config.max_features,
                                      n_jobs=self.config.n_jobs, random_state=seed)


@dataclass
class SVMConfig(EarlyFusionConfig):
    C: float = 1.0
    kernel: str = "rbf"
    calibration_folds: int = 5


@register_method("early_svm", SVMConfig, family="baseline",
                 description="early fusion: concatenated features, standardised, SVM with Platt-scaled probabilities")
class EarlySVM(SklearnMethod):
    def estimator(self, seed: int):
        # Platt scaling fitted on cross-validated decision values of the training rows; one final SVC
        # on all of them (what SVC(probability=True) did before scikit-learn 1.9 deprecated it)
        return CalibratedClassifierCV(SVC(C=self.config.C, kernel=self.config.kernel), method="sigmoid",
                                      cv=self.config.calibration_folds, ensemble=False)

"""Early fusion with scikit-learn: concatenate every modality's features, then one classifier.

Features are the method's prepared inputs (omics scaled with training statistics; images
average-pooled to a small grid and flattened); a missing modality contributes zeros. The
pipeline's standardisation is fitted on the training rows only. Methods: ``early_knn``,
``early_lr``, ``early_mlp``, ``early_rf``, ``early_svm`` (the seed study's KNN, LR, NN, RF and
SVM rows); all give class probabilities and go through the same fit / predict / mask calls
as the deep methods.

Each estimator's main hyper-parameters (C, k, depth, kernel, ...) are chosen by a grid search
with cross-validation inside the training rows (scikit-learn's ``GridSearchCV``; folds keep a
group, e.g. a donor, together when the training rows hold enough groups, else stratified folds),
as the reference baselines were tuned: an untuned baseline flatters every method compared with
it. The chosen values are kept in ``method.chosen`` (and in every result file).

Checkpoints never unpickle: the linear model (``early_lr``) is stored as arrays in the
safetensors file; the others as a ``skops`` file, loaded with an explicit list of trusted types.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from core.errors import MMXError
from core.models.base import Method, MethodConfig
from core.models.registry import register_method
from core.train import loop
from core.train.loop import iterate
from core.train.output import ModelOutput

SKOPS_FILE = "estimator.skops"
#: the only non-builtin types a stored estimator may hold beyond what skops trusts by default
TRUSTED_TYPES = [
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.tree._tree.Tree",
]


@dataclass
class EarlyFusionConfig(MethodConfig):
    image_grid: int = 8  # images are average-pooled to grid x grid per channel
    search: bool = True  # choose the grid's hyper-parameters by cross-validation inside the training rows
    search_folds: int = 5
    search_metric: str = "f1_weighted"  # a scikit-learn scorer name


class SklearnMethod(Method):
    native_absence = "its features are zeroed (after scaling) in the concatenated vector"
    """Shared behaviour of the scikit-learn early-fusion methods; subclasses give the estimator
    (built from the config) and the grid searched over (config field -> candidate values)."""

    grid: ClassVar[dict[str, list]] = {}
    #: where a config field sits among the estimator's parameters, when not under its own name
    param_names: ClassVar[dict[str, str]] = {}

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
        x, y = self.features(data, split.train), data.y[torch.as_tensor(split.train)].numpy()
        self.chosen = {}
        groups = np.asarray(data.groups)[split.train]
        folds = self._folds(y, groups, seed) if self.config.search and self.grid else None
        # the rarest class's count in the rows an estimator is fitted on (a search fold holds less)
        rarest = int(np.bincount(y)[np.unique(y)].min())
        n_folds = folds[0].get_n_splits() if folds else 1
        self.smallest_class = rarest - -(-rarest // n_folds) if folds else rarest
        pipe = make_pipeline(StandardScaler(), self.estimator(seed))
        if folds is None:
            self.model = pipe.fit(x, y)
        else:
            step = pipe.steps[-1][0]
            grid = {f"{step}__{self.param_names.get(k, k)}": v for k, v in self.grid.items()}
            search = GridSearchCV(pipe, grid, scoring=self.config.search_metric, cv=folds[0], n_jobs=1,
                                  error_score="raise")
            search.fit(x, y, **({"groups": groups} if isinstance(folds[0], StratifiedGroupKFold) else {}))
            self.model = search.best_estimator_
            self.chosen = {k: _plain(search.best_params_[f"{step}__{self.param_names.get(k, k)}"]) for k in self.grid}
            self.chosen |= {"cv": folds[1], "cv_" + self.config.search_metric: round(float(search.best_score_), 4)}
        score = self.chosen.get("cv_" + self.config.search_metric, float("nan"))
        return loop.FitResult(best_epoch=0, best_score=score, epochs_run=1, seconds=time.perf_counter() - t0)

    def _folds(self, y: np.ndarray, groups: np.ndarray, seed: int):
        """The search's folds and their description: group-aware when the training rows hold at
        least ``search_folds`` groups, else stratified; None when a class is too rare to split."""
        k = min(self.config.search_folds, int(np.bincount(y)[np.unique(y)].min()))
        if k < 2:
            return None
        if len(np.unique(groups)) >= k:
            return StratifiedGroupKFold(k, shuffle=True, random_state=seed), f"{k}-fold stratified, groups not split"
        return StratifiedKFold(k, shuffle=True, random_state=seed), f"{k}-fold stratified (one group in training)"

    def _predict_outputs(self, data, idx, masks) -> ModelOutput:
        p = np.zeros((len(idx), self.n_classes))
        p[:, self.model.classes_] = self.model.predict_proba(self.features(data, idx, masks))
        return ModelOutput(torch.log(torch.from_numpy(p).float().clamp(min=1e-12)))


    # ------------------------------------------------------------ checkpoint
    def card_state(self) -> dict:
        return {"chosen": self.chosen, "smallest_class": int(self.smallest_class)}

    def restore_card_state(self, state: dict) -> None:
        self.chosen, self.smallest_class = dict(state["chosen"]), int(state["smallest_class"])

    def artefacts(self) -> dict[str, bytes]:
        import skops.io as sio  # ~1 s to import: only when a checkpoint is written or read

        return {SKOPS_FILE: sio.dumps(self.model)}

    def load_artefacts(self, files: dict[str, bytes]) -> None:
        import skops.io as sio

        if set(files) != {SKOPS_FILE}:
            raise MMXError(f"{self.name} needs exactly the file {SKOPS_FILE!r}, the card lists {sorted(files)}")
        try:
            untrusted = sorted(set(sio.get_untrusted_types(data=files[SKOPS_FILE])) - set(TRUSTED_TYPES))
        except Exception as e:  # skops raises zipfile / JSON / key errors for a file that is not its format
            raise MMXError(f"{SKOPS_FILE} is not a readable skops file ({type(e).__name__}: {e})") from None
        if untrusted:
            raise MMXError(f"{SKOPS_FILE} holds types outside the trusted list: {untrusted}")
        self.model = sio.loads(files[SKOPS_FILE], trusted=TRUSTED_TYPES)


def _plain(v):
    """A searched value as JSON keeps it (numpy scalars and tuples become Python ones)."""
    if isinstance(v, tuple):
        return list(v)
    return v.item() if hasattr(v, "item") else v


@dataclass
class LogRegConfig(EarlyFusionConfig):
    C: float = 1.0
    max_iter: int = 3000


@register_method("early_lr", LogRegConfig, family="baseline",
                 description="early fusion: concatenated features, standardised, logistic regression")
class EarlyLogReg(SklearnMethod):
    grid = {"C": [0.001, 0.01, 0.1, 1.0, 10.0]}

    def estimator(self, seed: int):
        return LogisticRegression(C=self.config.C, max_iter=self.config.max_iter, random_state=seed)

    # a linear model is a few arrays: they travel in the safetensors file, no estimator file at all
    ARRAYS = {"scaler": ("mean_", "scale_", "var_"), "lr": ("coef_", "intercept_", "classes_")}

    def weights(self) -> dict[str, torch.Tensor]:
        scaler, lr = self.model[0], self.model[-1]
        parts = {"scaler": scaler, "lr": lr}
        return {**super().weights(), **{f"estimator.{k}.{a}": torch.from_numpy(np.asarray(getattr(parts[k], a)).copy())
                                        for k, names in self.ARRAYS.items() for a in names}}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        arrays = {k: v.numpy() for k, v in state.items() if k.startswith("estimator.")}
        super().load_weights({k: v for k, v in state.items() if not k.startswith("estimator.")})
        need = {f"estimator.{k}.{a}" for k, names in self.ARRAYS.items() for a in names}
        if set(arrays) != need:
            raise MMXError(f"early_lr weights lack {sorted(need - set(arrays))} "
                           f"or have unknown {sorted(set(arrays) - need)}")
        scaler, lr = StandardScaler(), self.estimator(0)
        for k, est in (("scaler", scaler), ("lr", lr)):
            for a in self.ARRAYS[k]:
                setattr(est, a, arrays[f"estimator.{k}.{a}"])
            est.n_features_in_ = lr.coef_.shape[1] if k == "lr" else len(scaler.mean_)
        if lr.coef_.shape[1] != len(scaler.mean_):
            raise MMXError("early_lr weights: the scaler and the linear model disagree on the number of features")
        self.model = make_pipeline(scaler, lr)

    def artefacts(self) -> dict[str, bytes]:
        return {}

    def load_artefacts(self, files: dict[str, bytes]) -> None:
        Method.load_artefacts(self, files)


@dataclass
class KNNConfig(EarlyFusionConfig):
    n_neighbors: int = 5
    weights: str = "uniform"  # uniform | distance


@register_method("early_knn", KNNConfig, family="baseline",
                 description="early fusion: concatenated features, standardised, k-nearest neighbours")
class EarlyKNN(SklearnMethod):
    grid = {"n_neighbors": [3, 5, 9, 15, 25], "weights": ["uniform", "distance"]}

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
    grid = {"alpha": [1e-4, 1e-2, 1.0]}
    param_names = {"hidden": "hidden_layer_sizes"}

    def estimator(self, seed: int):
        return MLPClassifier(hidden_layer_sizes=tuple(self.config.hidden), alpha=self.config.alpha,
                             max_iter=self.config.max_iter, random_state=seed)


@dataclass
class ForestConfig(EarlyFusionConfig):
    n_estimators: int = 500
    max_features: str = "sqrt"
    max_depth: int | None = None
    n_jobs: int = 1


@register_method("early_rf", ForestConfig, family="baseline",
                 description="early fusion: concatenated features, random forest")
class EarlyRF(SklearnMethod):
    grid = {"max_depth": [5, 15, None]}

    def estimator(self, seed: int):
        return RandomForestClassifier(n_estimators=self.config.n_estimators, max_features=self.config.max_features,
                                      max_depth=self.config.max_depth, n_jobs=self.config.n_jobs, random_state=seed)


@dataclass
class SVMConfig(EarlyFusionConfig):
    C: float = 1.0
    kernel: str = "rbf"
    calibration_folds: int = 5


@register_method("early_svm", SVMConfig, family="baseline",
                 description="early fusion: concatenated features, standardised, SVM with Platt-scaled probabilities")
class EarlySVM(SklearnMethod):
    grid = {"C": [0.1, 1.0, 10.0], "kernel": ["linear", "rbf"]}
    param_names = {"C": "estimator__C", "kernel": "estimator__kernel"}

    def estimator(self, seed: int):
        # Platt scaling fitted on cross-validated decision values of the training rows; one final SVC
        # on all of them (what SVC(probability=True) did before scikit-learn 1.9 deprecated it)
        # as many calibration folds as the rarest class allows (a rare cell type may have 6 cells)
        folds = min(self.config.calibration_folds, self.smallest_class)
        if folds < 2:
            raise MMXError(f"early_svm needs at least 2 training samples of every class to calibrate its "
                           f"probabilities (the rarest class has {self.smallest_class} where it is fitted)")
        return CalibratedClassifierCV(SVC(C=self.config.C, kernel=self.config.kernel), method="sigmoid",
                                      cv=folds, ensemble=False)

"""Second-level models: a LightGBM classifier, a logistic-regression calibrator, or their blend.

All are fitted by :func:`fit_pair_model` and expose the same small interface, so the fold loop
in ``stack.py`` does not care which one the config chose. The blend (``stack.model=blend``)
averages the two models' probabilities: trees catch interactions of the pair features, the
linear model is smooth where trees fitted on a few thousand trials are coarse and noisy (on
libri-zalo the blend's OOF EER is below LightGBM's, 3.0 vs 3.5 %, and level with the logistic
model's).

Example
-------
>>> import numpy as np
>>> from src.config import StackConfig
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(200, 3)); y = (x[:, 0] > 0).astype(int)
>>> cfg = StackConfig(model="logistic")
>>> model = fit_pair_model(cfg, x[:150], y[:150], x[150:], y[150:], seed=0)
>>> model.predict(x[:2]).shape
(2,)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from src.config import StackConfig

log = logging.getLogger(__name__)


@dataclass
class PairModel:
    """A fitted second-level model: probabilities in, importances out."""

    kind: str  # "lightgbm", "logistic" or "blend"
    estimator: Any  # lgb.Booster, sklearn Pipeline, or (blend) a list of PairModel
    rounds: int  # boosting rounds kept (0 for logistic)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Probability that each pair is one speaker, shape ``(pairs,)``."""
        if self.kind == "lightgbm":
            return self.estimator.predict(features, num_iteration=self.rounds)
        if self.kind == "blend":
            return np.mean([member.predict(features) for member in self.estimator], axis=0)
        return self.estimator.predict_proba(features)[:, 1]

    def importance(self) -> np.ndarray:
        """Total gain per feature (LightGBM), |coefficient| on standardised features
        (logistic), or for a blend each member's importances as shares of 1, averaged."""
        if self.kind == "lightgbm":
            return self.estimator.feature_importance("gain", iteration=self.rounds)
        if self.kind == "blend":
            totals = [m.importance() for m in self.estimator]
            return np.mean([t / max(t.sum(), 1e-12) for t in totals], axis=0)
        return np.abs(self.estimator[-1].coef_.ravel())

    def to_text(self) -> str:
        """The fitted model as text (no pickle): LightGBM's model format, the logistic
        model's imputer medians, scaler and coefficients as JSON, or a blend's members in JSON."""
        if self.kind == "lightgbm":
            return self.estimator.model_to_string(num_iteration=self.rounds)
        if self.kind == "blend":
            members = [
                {"kind": "lightgbm", "model": m.to_text()}
                if m.kind == "lightgbm"
                else json.loads(m.to_text())
                for m in self.estimator
            ]
            return json.dumps({"kind": "blend", "members": members})
        clip, imputer, scaler, logistic = self.estimator
        return json.dumps(
            {
                "kind": "logistic",
                "low": clip.low_.tolist(),  # -inf/inf become -Infinity/Infinity in JSON
                "high": clip.high_.tolist(),
                # an all-missing column is imputed with 0 (keep_empty_features)
                "medians": np.nan_to_num(imputer.statistics_, nan=0.0).tolist(),
                "mean": scaler.mean_.tolist(),
                "scale": scaler.scale_.tolist(),
                "coef": logistic.coef_.ravel().tolist(),
                "intercept": float(logistic.intercept_[0]),
            }
        )


class LinearPairModel:
    """A logistic stacker read back from :meth:`PairModel.to_text`: clip, impute, standardise,
    sigmoid."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.low = np.asarray(params["low"], dtype=np.float64)
        self.high = np.asarray(params["high"], dtype=np.float64)
        self.medians = np.asarray(params["medians"], dtype=np.float64)
        self.mean = np.asarray(params["mean"], dtype=np.float64)
        self.scale = np.asarray(params["scale"], dtype=np.float64)
        self.coef = np.asarray(params["coef"], dtype=np.float64)
        self.intercept = float(params["intercept"])

    def predict(self, features: np.ndarray) -> np.ndarray:
        clipped = np.clip(features, self.low, self.high)
        x = np.where(np.isnan(clipped), self.medians, clipped)
        logit = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logit))


class BoosterPairModel:
    """A LightGBM stacker read back from its model text (every saved round is used)."""

    def __init__(self, text: str) -> None:
        self.booster = lgb.Booster(model_str=text)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(features)


class BlendedPairModel:
    """A blend read back from :meth:`PairModel.to_text`: the members' probabilities averaged."""

    def __init__(self, members: list[LinearPairModel | BoosterPairModel]) -> None:
        self.members = members

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.mean([member.predict(features) for member in self.members], axis=0)


SavedPairModel = LinearPairModel | BoosterPairModel | BlendedPairModel


def _saved_model(params: dict[str, Any]) -> SavedPairModel:
    """One model from its JSON description (a blend's members included)."""
    kind = params.get("kind", "logistic")
    if kind == "blend":
        return BlendedPairModel([_saved_model(member) for member in params["members"]])
    if kind == "lightgbm":
        return BoosterPairModel(params["model"])
    if kind == "logistic":
        return LinearPairModel(params)
    raise ValueError(f"unknown saved stacker kind {kind!r}")


def load_pair_model(path: Path) -> SavedPairModel:
    """A stacker written by :meth:`PairModel.to_text` (``.txt``: LightGBM; ``.json``: logistic
    or blend)."""
    text = Path(path).read_text(encoding="utf-8")
    if path.suffix == ".json":
        return _saved_model(json.loads(text))
    return BoosterPairModel(text)


def pair_model_suffix(kind: str) -> str:
    """File extension of a saved stacker of ``kind``."""
    return ".txt" if kind == "lightgbm" else ".json"


# rows of training data per LightGBM thread when the config says 0 ("auto"). On tens of
# thousands of rows a boosting round takes about a millisecond and synchronising threads costs
# about as much as the histogram work they share: on a busy 2-core machine 2 threads measured
# 2-6x SLOWER than 1 for the 16k-row stack and the 40k-row adversarial check (on an idle one,
# 1.8x faster). Only larger data gets more threads, up to every core.
ROWS_PER_THREAD = 50000


def thread_count(requested: int, rows: int) -> int:
    """``requested`` threads; 0 = one per ``ROWS_PER_THREAD`` rows, at least 1, at most all cores.

    Example
    -------
    >>> thread_count(3, 10), thread_count(0, 500)
    (3, 1)
    """
    if requested > 0:
        return requested
    return max(1, min(os.cpu_count() or 1, rows // ROWS_PER_THREAD))


def lightgbm_params(cfg: StackConfig, seed: int, rows: int) -> dict[str, Any]:
    """Deterministic LightGBM parameters for a binary same-speaker classifier."""
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "min_data_in_leaf": cfg.min_child_samples,
        "feature_fraction": cfg.feature_fraction,
        "lambda_l2": cfg.reg_lambda,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": thread_count(cfg.num_threads, rows),
        "verbosity": -1,
    }


def _fit_lightgbm(
    cfg: StackConfig,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    seed: int,
) -> PairModel:
    params = lightgbm_params(cfg, seed, len(y_fit) + len(y_valid))
    fit_set = lgb.Dataset(x_fit, y_fit, free_raw_data=False)
    valid_set = lgb.Dataset(x_valid, y_valid, reference=fit_set)
    booster = lgb.train(
        params,
        fit_set,
        num_boost_round=cfg.n_estimators,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)],
    )
    rounds = max(int(booster.best_iteration or cfg.n_estimators), 1)
    if not cfg.refit:
        return PairModel("lightgbm", booster, rounds)
    x_all = np.concatenate([x_fit, x_valid])
    y_all = np.concatenate([y_fit, y_valid])
    # the early-stopped size, a little larger for the larger training set
    refit_rounds = max(round(rounds * len(y_all) / len(y_fit)), 1)
    refit = lgb.train(params, lgb.Dataset(x_all, y_all), num_boost_round=refit_rounds)
    return PairModel("lightgbm", refit, refit_rounds)


CLIP_PERCENT = 0.5  # the logistic model's features are clipped to their training 0.5-99.5 %


class TrainingRangeClip(BaseEstimator, TransformerMixin):
    """Clip each feature to its training range (the ``percent`` and ``100 - percent``
    percentiles; a column without values is left alone), so a linear model never extrapolates:
    test clips can be longer or louder than any training pair (see adversarial validation)."""

    def __init__(self, percent: float = CLIP_PERCENT) -> None:
        self.percent = percent

    def fit(self, x: np.ndarray, y: np.ndarray | None = None) -> TrainingRangeClip:
        values = np.where(np.isfinite(x), x, np.nan)
        empty = np.isnan(values).all(axis=0)
        filled = np.where(empty, 0.0, values)  # no all-NaN column reaches nanpercentile
        self.low_ = np.where(empty, -np.inf, np.nanpercentile(filled, self.percent, axis=0))
        self.high_ = np.where(empty, np.inf, np.nanpercentile(filled, 100 - self.percent, axis=0))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.low_, self.high_)  # NaN stays NaN for the imputer


def _fit_logistic(cfg: StackConfig, x: np.ndarray, y: np.ndarray, seed: int) -> PairModel:
    pipeline: Pipeline = make_pipeline(
        TrainingRangeClip(),
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=cfg.logistic_c, max_iter=2000, random_state=seed),
    )
    pipeline.fit(x, y)
    return PairModel("logistic", pipeline, 0)


def fit_pair_model(
    cfg: StackConfig,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    seed: int,
) -> PairModel:
    """Fit the configured model; LightGBM early-stops on ``(x_valid, y_valid)``.

    Parameters
    ----------
    x_fit, y_fit
        Training pairs ``(n, features)`` and labels ``(n,)``.
    x_valid, y_valid
        Held-out pairs from other folds than ``x_fit`` for early stopping. With ``cfg.refit``
        the final LightGBM model is refitted on both parts; the logistic model always uses both.
    seed
        Seed of every random choice inside the model.
    """
    if cfg.model not in ("lightgbm", "logistic", "blend"):
        raise ValueError(
            f"unknown stack model {cfg.model!r}; choose 'lightgbm', 'logistic' or 'blend'"
        )
    members = []
    if cfg.model in ("lightgbm", "blend"):
        members.append(_fit_lightgbm(cfg, x_fit, y_fit, x_valid, y_valid, seed))
    if cfg.model in ("logistic", "blend"):
        x = np.concatenate([x_fit, x_valid])
        y = np.concatenate([y_fit, y_valid])
        members.append(_fit_logistic(cfg, x, y, seed))
    if len(members) == 1:
        return members[0]
    return PairModel("blend", members, members[0].rounds)

"""The :class:`Evidence` a refiner looks at: given labels, anchors, features, softmax, folds."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..arrays import UnitRows
from ..errors import InputError
from ..validation import as_labels

__all__ = ["Evidence", "Refit"]

#: ``refit(labels (N,), round) -> Evidence``: fresh out-of-sample evidence trained on ``labels``.
Refit = Callable[[np.ndarray, int], "Evidence"]


def _array(name: str, value: Any, ndim: int, shape: Dict[int, int], what: str) -> np.ndarray:
    """``value`` as an array of ``ndim`` dims whose axis ``k`` has size ``shape[k]`` (memory maps
    and float dtypes are kept as they are)."""
    arr = value if isinstance(value, (np.ndarray, UnitRows)) else np.asarray(value)
    if arr.ndim != ndim:
        raise InputError(f"evidence.{name} must be {what}, got shape {arr.shape}")
    for axis, size in shape.items():
        if arr.shape[axis] != size:
            raise InputError(f"evidence.{name} must be {what}, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"evidence.{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


#: :attr:`Evidence.pred_probs_view`: from a model over the same features, or another view of the image.
PRED_PROBS_VIEWS = ("same", "separate")


@dataclass
class Evidence:
    """Everything a refiner may look at, for N samples and C classes (M anchors, D dims, K folds).

    Attributes:
        labels: (N,) int64 given labels in [0, C).
        num_classes: C.
        anchor_labels: (M,) int64 class of each anchor.
        features: (N, D) float or None. One fixed space (may be a read-only ``np.memmap`` or a
            :class:`~synref.arrays.UnitRows` view: a row subset, never copied), or,
            when ``fold_ids`` is set, row i lies in the space of the fold model that held sample
            i out.
        anchor_features: (M, D) in the same space, or (K, M, D) (the anchors in each fold's
            space) when ``fold_ids`` is set.
        pred_probs: (N, C) out-of-sample softmax, or None.
        pred_probs_fn: ``() -> (N, C)``: computes ``pred_probs`` on first use instead
            (:meth:`resolve_pred_probs`): a refiner that does not read them never pays for them.
        fold_ids: (N,) int in [0, K): the fold that held each sample out, or None.
        class_names: the C class names (error messages, reports), or None.
        refit: optional ``(labels (N,), round) -> Evidence``: fresh out-of-sample evidence
            trained on those labels (what a multi-round refiner needs). Its ``labels`` are the
            labels it was trained on; refiners keep scoring the given labels of the first
            evidence.
        seed: seeds any random choice a refiner makes (e.g. the anchor calibration split).
        pred_probs_view: how ``pred_probs`` relate to ``features`` (refiners weigh them by it):
            ``"same"`` when they come from a model over the same features (a linear head on them,
            or the network whose penultimate layer they are), ``"separate"`` when from another
            view of the image (a network on the pixels next to a frozen encoder's features). None:
            ``description["pred_probs_view"]`` when given there, else ``"same"``.
        description: JSON-able facts about how the evidence was made (head, space, ...), copied
            into the refinement result's ``info`` (``pred_probs_view`` included).

    Shapes are checked on construction (a one-line InputError naming the field).
    """

    labels: np.ndarray
    num_classes: int
    anchor_labels: np.ndarray
    features: Optional[np.ndarray] = None
    anchor_features: Optional[np.ndarray] = None
    pred_probs: Optional[np.ndarray] = None
    pred_probs_fn: Optional[Callable[[], np.ndarray]] = None
    fold_ids: Optional[np.ndarray] = None
    class_names: Optional[List[str]] = None
    refit: Optional[Refit] = None
    seed: int = 0
    description: Dict[str, Any] = field(default_factory=dict)
    pred_probs_view: Optional[str] = None

    def __post_init__(self) -> None:
        try:
            self.num_classes = int(self.num_classes)
        except (TypeError, ValueError):
            raise InputError(f"evidence.num_classes must be an integer, got {self.num_classes!r}") from None
        if self.num_classes < 1:
            raise InputError(f"evidence.num_classes must be >= 1, got {self.num_classes}")
        c = self.num_classes
        self.labels = as_labels(self.labels, c, what="evidence.labels")
        n = len(self.labels)
        self.anchor_labels = as_labels(self.anchor_labels, c, what="evidence.anchor_labels")
        m = len(self.anchor_labels)
        folds: Optional[int] = None
        if self.fold_ids is not None:
            self.fold_ids = as_labels(self.fold_ids, None, n=n, what="evidence.fold_ids")
            if n and self.fold_ids.min() < 0:
                raise InputError("evidence.fold_ids must be >= 0")
            folds = int(self.fold_ids.max()) + 1 if n else 0
        if self.features is not None:
            self.features = _array("features", self.features, 2, {0: n}, f"(N={n}, D)")
        if self.anchor_features is not None:
            dim = {} if self.features is None else {-1: self.features.shape[1]}
            if folds is None:
                self.anchor_features = _array("anchor_features", self.anchor_features, 2, {0: m, **dim},
                                              f"(M={m}, D)" + (f" with D={dim[-1]}" if dim else ""))
            else:
                self.anchor_features = _array("anchor_features", self.anchor_features, 3, {1: m, **dim},
                                              f"(K, M={m}, D) (one anchor set per fold, fold_ids is set)")
                if self.anchor_features.shape[0] < folds:
                    raise InputError(f"evidence.anchor_features has {self.anchor_features.shape[0]} folds but "
                                     f"fold_ids go up to {folds - 1}")
        elif self.features is not None:
            raise InputError("evidence.anchor_features are needed with evidence.features")
        if self.pred_probs is not None:
            self.pred_probs = _array("pred_probs", self.pred_probs, 2, {0: n, 1: c}, f"(N={n}, C={c})")
        if self.pred_probs_fn is not None and not callable(self.pred_probs_fn):
            raise InputError("evidence.pred_probs_fn must be a callable () -> (N, C) array")
        if self.class_names is not None:
            self.class_names = [str(name) for name in self.class_names]
            if len(self.class_names) != c:
                raise InputError(f"evidence.class_names has {len(self.class_names)} names for {c} classes")
        if self.refit is not None and not callable(self.refit):
            raise InputError("evidence.refit must be a callable (labels, round) -> Evidence")
        self.seed = int(self.seed)
        view = self.pred_probs_view if self.pred_probs_view is not None else \
            self.description.get("pred_probs_view", "same")
        if view not in PRED_PROBS_VIEWS:
            raise InputError(f"evidence.pred_probs_view must be one of {', '.join(PRED_PROBS_VIEWS)}, got {view!r}")
        self.pred_probs_view = view
        self.description = {**self.description, "pred_probs_view": view}

    def resolve_pred_probs(self) -> Optional[np.ndarray]:
        """The (N, C) ``pred_probs``, computed by ``pred_probs_fn`` on the first call (then kept);
        None when the evidence has neither."""
        if self.pred_probs is None and self.pred_probs_fn is not None:
            probs = self.pred_probs_fn()
            self.pred_probs_fn = None
            self.pred_probs = _array("pred_probs", probs, 2, {0: len(self.labels), 1: self.num_classes},
                                     f"(N={len(self.labels)}, C={self.num_classes})")
        return self.pred_probs

    @property
    def has_pred_probs(self) -> bool:
        """``pred_probs`` are given or can be computed."""
        return self.pred_probs is not None or self.pred_probs_fn is not None

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    @property
    def num_folds(self) -> Optional[int]:
        """K when the features live in per-fold spaces (``fold_ids`` is set), else None."""
        if self.fold_ids is None:
            return None
        return int(self.anchor_features.shape[0]) if self.anchor_features is not None else \
            int(self.fold_ids.max()) + 1

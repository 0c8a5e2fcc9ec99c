"""``posterior``: synref's default refiner. A label changes when the estimated probability that
the new label is right says so, with every piece of evidence in the role it can carry.

1. **Anchors are clean labelled data.** A linear softmax head on the anchor features, its L2
   penalty and temperature chosen by likelihood on held-out anchor halves, gives a calibrated
   prior ``p(y | x)`` for every real image that never saw a given label.
2. **Given labels are noisy observations with structure.** The noise transition matrix
   ``T[c, j] = P(given j | true c)`` is estimated by moments from that label-free prior
   (``sum_i p_i(c) [given_i = j]``, rows normalised). Re-estimating T from posteriors that
   already contain the labels (plain EM) inflates its diagonal and was measured to hurt.
3. **Posterior.** ``log r_i(y) = log p_i(y) + log T[y, given_i]`` plus two more observations of
   the same true class:
   - the given labels of the ``neighbors`` nearest real images (kNN graph on the features):
     ``neighbor_weight * mean_j log(purity * T[y, given_j] + (1 - purity) * q[given_j])``: a
     neighbour shares the true class with probability ``purity`` (measured on the prior: how often
     neighbours share the prior's class), else its label follows the labels' marginal ``q``; a
     neighbourhood labelled 30 % "cat" and 70 % "dog" fingerprints the row of T it came from;
   - the out-of-sample ``pred_probs`` of a model trained on the given labels (a soft noisy
     label), read through the model's own transition ``G[c, j] = P(model says j | true c)``
     (estimated by moments like T, from ``pred_probs`` instead of the given labels):
     ``pred_probs_weight * sum_j pred_probs_i(j) log G[y, j]``.
4. **Self-training** (``self_training_rounds``): heads fitted on the anchors plus the real images with their
   posteriors as soft targets (k-fold cross-fitted over images and anchors, so nothing judges
   itself; temperature refitted on the held-out anchors) replace the anchor-only prior; T stays.
5. **Decision.** Candidates are the samples whose most probable class is not the given label.
   By default all of them change (the rule that maximises the expected label accuracy: a
   change gains ``r(new) - r(given) > 0`` in expectation). ``target_precision=P`` keeps the
   longest prefix, by decreasing posterior, whose mean posterior (the estimated precision of
   the changes) is at least P; the posterior's confidence is first calibrated on planted
   samples (held-out anchors given labels drawn from T, ``calibrate_precision``). When the
   labels are mostly right, T's heavy diagonal makes the posterior of another class rarely win,
   so few labels change.
6. **Model check.** When the given labels of neighbours agree far more often than the model
   predicts, the anchors do not describe these images; the posterior is then not trusted and,
   by default, confident learning on the given labels and ``pred_probs`` alone decides
   (``on_model_check_failure``: ``confident-learning``, or ``keep`` to change nothing). The
   check reads only the anchor-only prior, T and the graph, so it is made before self-training,
   whose rounds are skipped when it fails (or when too few given labels per class let nothing
   change): their posterior would decide nothing.

Evidence whose features live in per-fold spaces (``fold_ids``: k-fold classifiers) is refined
fold by fold: each fold's held-out samples with the anchors in that fold's space.

Every choice of the defaults (``neighbors``, the weights, ``self_training_rounds``) was made on the digits data
(``docs/posterior-refiner.md``: the method, the measured tables, the ablation); the penalty and
temperatures are fitted on the anchors of each run. Scores of the result are the posterior (N, C).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..arrays import UnitRows, l2_normalize, row_chunks
from ..distributed import all_gather_rows, all_reduce_sum, broadcast_object, process_group, row_share
from ..errors import InputError
from ..evidence import Evidence
from ..neighbors import KNN_METHODS, TARGET_RECALL, exact_knn, knn_graph
from ..progress import progress as progress_bar
from ..stages import StageClock
from ..train.linear import HeadProblem, fit_heads_lbfgs, held_out_logits, principal_rows
from .base import REFINERS, Refiner, RefinerOptions
from .confident import FALLBACK_FILTER, confident_learning_correction
from .minimum_evidence import MIN_ROWS_PER_CLASS, minimum_evidence
from .result import Decision, RefinementResult

__all__ = ["PosteriorOptions", "PosteriorRefiner", "MODEL_CHECK_FALLBACKS", "temper", "transition_matrix",
           "label_posterior", "choose_changes", "neighbor_label_agreement", "neighbor_purity", "anchor_head",
           "fit_soft_head", "label_moments"]

Rows = Union[UnitRows, np.ndarray]

_EPS = 1e-12
#: ``penalty`` candidates (L2 penalty ``penalty / n * |W|^2`` for n training rows).
PENALTY_GRID = (1.0, 3.0, 10.0, 30.0)
TEMPERATURE_GRID = tuple(float(t) for t in np.geomspace(0.2, 5.0, 41))
LOGIT_SCALE = 10.0
#: what the refiner does when its model check fails (:attr:`PosteriorOptions.on_model_check_failure`).
MODEL_CHECK_FALLBACKS = ("confident-learning", "keep")
#: weight of ``pred_probs`` that are a separate view of the image (a network on the pixels next to
#: another feature space). Chosen on the digits (SimCLR space, cross-fitted CNN): mean refined
#: label accuracy over the five noise settings 0.920 (weight 1), 0.927 (2), 0.933 (3), 0.934 (4),
#: 0.938 (6), 35 % PMD peaking at 3 (0.953); at 8 % uniform noise 3 gave 0.985 against 0.973.
SEPARATE_VIEW_WEIGHT = 3.0
#: L-BFGS iterations of the anchor-only head (each penalty of the grid).
ANCHOR_HEAD_STEPS = 60
#: ``head_dims=None``: the self-training heads read the rows projected on their leading principal
#: components when one pass of the full heads would cost more than N * folds * C * D multiply-adds:
#: ``(work, dims)`` pairs, the first whose work is exceeded applies. 512 components above 2^31
#: (about 42,000 rows x 4 folds x 10 classes x 1280 dims: the full heads are about twice the
#: cost, and on real CIFAR-10 Lite0 features, 10,000 rows, six noise settings, 512 components
#: refined as well as the full rows: mean +0.08 points, worst -0.04; 256: mean -0.09, worst -0.28;
#: on the clean validation split, 4,000 rows: 512 mean -0.09, worst -0.46; 384 -0.15; 256 -0.14;
#: docs/scale.md); 256 above 2^38 (e.g. 10^5 rows x 1000 classes, where 50 passes of the full
#: heads would take 25 min on 2 cores).
HEAD_PROJECTIONS = ((1 << 38, 256), (1 << 31, 512))
#: the anchor-only head (and the prior it gives) reads the self-training heads' projected rows
#: (``head_dims`` or :data:`HEAD_PROJECTIONS`; 512 components where those keep the full rows)
#: when one pass of its two half-heads over the full anchors costs more than this many
#: multiply-adds (M x 2 x C x D): 10,000 anchors x
#: 1000 classes x 1280 dims (2.6 x 10^10) is projected, 5,000 anchors x 100 classes (1.3 x 10^9)
#: and every 10-class set stay on the full rows.
ANCHOR_HEAD_WORK = 1 << 33


@dataclass
class PosteriorOptions(RefinerOptions):
    """Options of :class:`PosteriorRefiner` (``alpha`` and ``threshold`` are not used: the
    decision follows the posterior and ``target_precision``).

    Attributes:
        neighbors: k of the kNN graph over the real features (0: no neighbour term).
        neighbor_weight: weight of the neighbours' mean label log-likelihood.
        neighbor_graph: how the kNN graph is built (:func:`synref.neighbors.knn_graph`): ``auto``
            (exact up to :data:`~synref.neighbors.EXACT_MAX_ROWS` rows, a faiss HNSW graph above),
            ``exact``, ``hnsw`` or ``ivf``.
        neighbor_recall: the HNSW graph's efSearch is raised until its recall@k on sampled rows
            reaches this (:data:`~synref.neighbors.TARGET_RECALL`, 0.95); lower is faster.
        pred_probs_weight: weight of the evidence's ``pred_probs`` read as a soft noisy label;
            None (default): :data:`SEPARATE_VIEW_WEIGHT` (3) when they are a separate view of the image
            (``evidence.pred_probs_view == "separate"``), else 0 (a head over the
            same features would count the image twice).
        self_training_rounds: self-training rounds (0: the anchor-only prior).
        folds: cross-fitting folds of the self-training heads.
        head_steps: L-BFGS iterations of each self-training head (the anchor-only head always
            runs 60). 20 was chosen on allowed data: mean refined label accuracy over seven noise
            settings of the CIFAR-10 clean validation split 0.7904 (60 steps: 0.7902), over the
            five digits settings 0.9199 (60: 0.9209), at a third of the time.
        penalty: L2 penalty of the heads; None picks it on held-out anchor halves.
        deconvolve: correct the estimated T for the prior's own errors, measured on held-out
            anchors (see :func:`transition_matrix`).
        target_precision: estimated precision the changed set must keep (in (0, 1]); None
            changes every sample whose most probable class is not its given label.
        calibrate_precision: with a ``target_precision``, first calibrate the posterior's
            confidence on planted samples (held-out anchors given labels drawn from the estimated
            T; two more posterior passes): the posterior is over-confident about its changes.
            On the CIFAR-10 clean validation split (seven noise settings) the measured precision
            at ``target_precision=0.9`` rose from 0.66-0.91 to 0.71-0.97 (temperatures 1.38-1.76).
        min_model_fit: the model check (do no harm): the fraction of neighbour pairs that share a
            given label, as the model predicts it (purity, T, the label marginal), over the
            fraction observed. Below ``min_model_fit`` the anchors do not describe these images
            (a domain gap the held-out anchors cannot see) and nothing is changed. None: no check.
            0.5 was chosen on the digits (SimCLR space and glyph anchors: 0.65-0.91, fit;
            ImageNet EfficientNet-Lite0 on 8x8 digits with glyph anchors: 0.27-0.43, where the
            refiner made clean labels worse, 1.0 -> 0.79).
        on_model_check_failure: ``confident-learning`` (default): the evidence's out-of-sample
            ``pred_probs`` and the given labels alone decide (cleanlab's ``find_label_issues``,
            ``filter_by="both"``, flagged samples take ``argmax(pred_probs)``; with a
            ``target_precision`` the prefix rule runs on ``pred_probs``' confidence); without
            ``pred_probs`` nothing changes. ``keep``: nothing changes. Measured on that digits
            case (uniform noise 0 / 10 / 20 / 40 %): ``keep`` 1.000 / 0.900 / 0.798 / 0.603,
            ``confident-learning`` 0.999 / 0.971 / 0.943 / 0.821.
        min_rows_per_class: do no harm on small sets: when a class has fewer given labels (in a
            space T is estimated in), nothing changes (:mod:`~synref.refiners.minimum_evidence`).
        head_dims: the self-training heads read the rows projected on this many leading
            principal components (0: the full rows; None: chosen by the work of one pass of the full
            heads, :data:`HEAD_PROJECTIONS`); so does the anchor head above
            :data:`ANCHOR_HEAD_WORK` (unless 0).
        seed: anchor halves and folds (None: ``evidence.seed``).
    """

    config_name = "posterior options"

    neighbors: int = 10
    neighbor_weight: float = 1.0
    neighbor_graph: str = "auto"
    neighbor_recall: float = TARGET_RECALL
    pred_probs_weight: Optional[float] = None
    self_training_rounds: int = 2
    folds: int = 4
    head_steps: int = 20
    head_dims: Optional[int] = None
    penalty: Optional[float] = None
    deconvolve: bool = True
    target_precision: Optional[float] = None
    calibrate_precision: bool = True
    min_model_fit: Optional[float] = 0.5
    on_model_check_failure: str = "confident-learning"
    min_rows_per_class: int = MIN_ROWS_PER_CLASS
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.head_steps) < 1:
            raise InputError(f"{self.config_name}: head_steps must be >= 1, got {self.head_steps}")
        for name in ("neighbors", "self_training_rounds") + (() if self.head_dims is None else ("head_dims",)):
            if int(getattr(self, name)) < 0:
                raise InputError(f"{self.config_name}: {name} must be >= 0, got {getattr(self, name)}")
        if int(self.folds) < 2:
            raise InputError(f"{self.config_name}: folds must be at least 2, got {self.folds}")
        for name in ("neighbor_weight", "pred_probs_weight"):
            if getattr(self, name) is not None and not float(getattr(self, name)) >= 0:
                raise InputError(f"{self.config_name}: {name} must be >= 0, got {getattr(self, name)}")
        if self.penalty is not None and not float(self.penalty) > 0:
            raise InputError(f"{self.config_name}: penalty must be > 0, got {self.penalty}")
        if self.min_model_fit is not None and not 0.0 <= float(self.min_model_fit) <= 1.0:
            raise InputError(f"{self.config_name}: min_model_fit must be in [0, 1], got {self.min_model_fit}")
        if self.target_precision is not None and not 0.0 < float(self.target_precision) <= 1.0:
            raise InputError(f"target precision must be in (0, 1], got {self.target_precision}")
        if not 0.0 < float(self.neighbor_recall) <= 1.0:
            raise InputError(f"{self.config_name}: neighbor_recall must be in (0, 1], got {self.neighbor_recall}")
        if self.neighbor_graph not in KNN_METHODS:
            raise InputError(f"{self.config_name}: neighbor_graph must be one of {', '.join(KNN_METHODS)}, "
                             f"got {self.neighbor_graph!r}")
        if self.on_model_check_failure not in MODEL_CHECK_FALLBACKS:
            raise InputError(f"{self.config_name}: on_model_check_failure must be one of "
                             f"{', '.join(MODEL_CHECK_FALLBACKS)}, got {self.on_model_check_failure!r}")


# ----------------------------------------------------------------------------- pieces
def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def temper(post: np.ndarray, temperature: float) -> np.ndarray:
    """(N, C) ``softmax(log post / temperature)``, float32: the same argmax, confidence scaled
    (computed in row blocks)."""
    post = np.asarray(post)
    out = np.empty(post.shape, np.float32)
    for rows in row_chunks(len(post), post.shape[1]):
        block = np.log(np.maximum(post[rows].astype(np.float64), _EPS)) / float(temperature)
        out[rows] = _softmax(block)
    return out


def head_rows(x: UnitRows, anchors: np.ndarray, num_classes: int, folds: int, dims: Optional[int], seed: int,
              pca_cache: Optional[Dict[Any, Any]] = None) -> Tuple[UnitRows, np.ndarray, Optional[Dict[str, Any]]]:
    """The rows the self-training heads read: ``x`` (N, D) and ``anchors`` (M, D) themselves, or
    both projected on the ``dims`` leading principal components of ``x`` (see
    :attr:`PosteriorOptions.head_dims`) as (N, dims) / (M, dims) unit rows, with the facts of
    the projection (None when not projected). The projection is the same in every process;
    ``pca_cache``: the eigendecomposition the neighbour graph already made (:func:`~synref.neighbors.pca_basis`)."""
    if dims is None:
        dims = head_projection_dims(len(x), folds, num_classes, x.dim)
    if not dims or dims >= x.dim:
        return x, anchors, None
    projected, basis, facts = principal_rows(x, int(dims), seed, pca_cache=pca_cache)
    return projected, l2_normalize(np.asarray(anchors, np.float32) @ basis), facts


def head_projection_dims(n: int, folds: int, num_classes: int, dim: int) -> int:
    """The principal components the self-training heads read by :data:`HEAD_PROJECTIONS` (0: the full rows)."""
    work = n * folds * num_classes * dim
    return next((size for limit, size in HEAD_PROJECTIONS if work > limit), 0)


def _folds(n: int, k: int, seed: int) -> np.ndarray:
    out = np.empty(n, np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return out


def fit_soft_head(x: Rows, targets: np.ndarray, *, penalty: float, steps: int = 60,
                  extra: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on unit rows ``x`` (n, D) with soft ``targets`` (n, C):
    logits ``LOGIT_SCALE * x @ W + b``, loss ``mean cross-entropy + penalty / n * |W|^2``
    (full-batch L-BFGS from zero: deterministic; streamed over row blocks). Returns ``W`` (D, C),
    ``b`` (C,). A row whose targets are all zero is left out (no loss, not counted in n).
    ``extra`` = (rows, targets) more rows of the same problem (the anchors)."""
    c = np.asarray(targets).shape[1]
    problem = HeadProblem(x, np.asarray(targets, np.float32), num_heads=1, num_classes=c, scale=LOGIT_SCALE,
                          penalty=penalty, extra=None if extra is None else
                          (extra[0], np.asarray(extra[1], np.float32), None))
    w, b = fit_heads_lbfgs(problem, steps)
    return np.ascontiguousarray(w.numpy().T), b.numpy()


def _logits(x: np.ndarray, head: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return LOGIT_SCALE * (x @ head[0]) + head[1]


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature of ``softmax(logits / t)`` (logits (n, C)) on :data:`TEMPERATURE_GRID` with
    the least negative log-likelihood of ``labels`` (n,). The likelihood ``mean(logsumexp(z / t)
    - z_y / t)`` is convex in 1 / t, so along the grid its differences only grow: a binary search
    for the first grid step that does not lower it finds the grid's first minimum with about 12
    evaluations instead of 41 (each is an exp over the (n, C) logits)."""
    z = np.asarray(logits, np.float32)
    shifted = z - z.max(axis=1, keepdims=True)                     # float32 exp, float64 sums
    picked = shifted[np.arange(len(labels)), np.asarray(labels, np.int64)].astype(np.float64)
    cache: Dict[int, float] = {}

    def nll(i: int) -> float:
        if i not in cache:
            t = TEMPERATURE_GRID[i]
            sums = np.exp(shifted * np.float32(1.0 / t)).sum(axis=1, dtype=np.float64)
            cache[i] = float(np.mean(np.log(sums) - picked / t))
        return cache[i]

    lo, hi = 0, len(TEMPERATURE_GRID) - 1                         # the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if nll(mid + 1) >= nll(mid):
            hi = mid
        else:
            lo = mid + 1
    return TEMPERATURE_GRID[lo]


def _anchor_halves(anchor_labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    half = np.zeros(len(anchor_labels), np.int64)
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        idx = np.flatnonzero(anchor_labels == c)
        half[rng.choice(idx, len(idx) // 2, replace=False)] = 1
    return half


def anchor_head(anchors: np.ndarray, anchor_labels: np.ndarray, num_classes: int, *,
                penalty: Optional[float], seed: int
                ) -> Tuple[Tuple[np.ndarray, np.ndarray], float, float, np.ndarray]:
    """A head on unit anchor rows (M, D): the penalty (from :data:`PENALTY_GRID` unless given) and
    temperature with the least held-out negative log-likelihood over the two anchor halves; the
    head is the mean of the two half-heads (the models that temperature calibrates). Both halves
    are fitted in one pass per step; each penalty starts from the solution of the next larger one
    (the grid is searched from the largest down).
    Returns (head, temperature, penalty, confusion): head = (W (D, C), b (C,));
    ``confusion[c]`` (C, C) is the mean held-out calibrated prediction of the class-c anchors
    (how the prior smears each true class)."""
    half = _anchor_halves(anchor_labels, num_classes, seed)
    problem = HeadProblem(anchors, np.asarray(anchor_labels, np.int64), num_heads=2, num_classes=num_classes,
                          folds=half, scale=LOGIT_SCALE)
    best: Optional[Tuple[float, float, float, np.ndarray, Tuple[torch.Tensor, torch.Tensor]]] = None
    init = None
    for pen in ((penalty,) if penalty is not None else sorted(PENALTY_GRID, reverse=True)):
        problem.penalty = float(pen)
        # head k is trained on the half that is not k: it predicts half k held out
        init = fit_heads_lbfgs(problem, ANCHOR_HEAD_STEPS, init=init)
        held = held_out_logits(anchors, *init, num_classes=num_classes, scale=LOGIT_SCALE, folds=half)
        t = fit_temperature(held, anchor_labels)
        nll = float(-np.log(_softmax(held / t)[np.arange(len(anchors)), anchor_labels] + _EPS).mean())
        if best is None or nll < best[0]:
            best = (nll, float(pen), t, held, init)
    assert best is not None
    confusion = np.zeros((num_classes, num_classes), np.float64)
    np.add.at(confusion, anchor_labels, _softmax(best[3] / best[2]))
    confusion /= confusion.sum(axis=1, keepdims=True)
    # the prior is the mean of the two calibrated half-heads: the models the temperature was fitted for
    w, b = best[4]
    w_mean = (w[:num_classes] + w[num_classes:]) / 2
    b_mean = (b[:num_classes] + b[num_classes:]) / 2
    return (np.ascontiguousarray(w_mean.numpy().T), b_mean.numpy()), best[2], best[1], confusion


def label_moments(prior: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) float64 ``M[c, j] = sum_i prior_i(c) [labels_i = j]`` (row blocks, O(N C))."""
    moments = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for rows in row_chunks(len(labels), num_classes):
        moments.index_add_(0, torch.as_tensor(np.asarray(labels[rows], np.int64)),
                           torch.as_tensor(np.asarray(prior[rows], np.float64)))
    return moments.numpy().T.copy()


def transition_matrix(prior: np.ndarray, labels: np.ndarray, num_classes: int, *,
                      confusion: Optional[np.ndarray] = None, pseudo_count: float = 1.0,
                      iterations: int = 200, soft_observations: Optional[np.ndarray] = None) -> np.ndarray:
    """(C, C) ``T[c, j] = P(given j | true c)`` by moments from a label-free prior (N, C).

    The moments ``M[c, j] = sum_i prior_i(c) [labels_i = j] / N`` are the joint ``B[c, j] =
    P(true c, given j)`` seen through the prior's own errors: ``M = confusion^T B``, with
    ``confusion[c, c'] = E[prior(c') | true c]`` (measured on held-out anchors). With a
    ``confusion``, B is recovered by Richardson-Lucy deconvolution (non-negative, sums to 1);
    without, ``B = M``. Then ``pseudo_count / N`` on the diagonal, rows normalised. A weak prior
    smears the labels' agreement over other classes, so without the correction a clean label
    set would look noisy. Work: O(N C) for the moments (O(N C^2) with ``soft_observations``),
    O(iterations C^3) for the deconvolution."""
    n = max(len(labels), 1)
    if soft_observations is None:
        moments = label_moments(prior, labels, num_classes)
    else:  # the same for a soft observation (N, C) such as a model's pred_probs
        moments = np.zeros((num_classes, num_classes), np.float64)
        for rows in row_chunks(len(prior), num_classes):
            moments += np.asarray(prior[rows], np.float64).T @ np.asarray(soft_observations[rows], np.float64)
    moments /= n
    joint = moments
    if confusion is not None:
        joint = moments.copy()
        for _ in range(iterations):
            joint = joint * (confusion @ (moments / np.maximum(confusion.T @ joint, _EPS)))
            joint /= joint.sum()
    joint = joint + pseudo_count / n * np.eye(num_classes)
    return joint / joint.sum(axis=1, keepdims=True)


def neighbor_purity(prior: np.ndarray, neighbors: np.ndarray, *, rows: Optional[slice] = None) -> float:
    """How often a sample and its neighbour share the true class, by the label-free prior:
    ``mean_i mean_{j in N(i)} sum_c prior_i(c) prior_j(c)``. A weak (flat) prior says little, so
    the estimate errs low: neighbours then count for less, never for more than they are worth.
    ``prior`` (N, C) of all rows; ``neighbors`` (n, k) of the rows ``rows`` (default all; under a
    process group each process gives its share and the sums are all-reduced). Float32 blocks of
    (B, k, C)."""
    rows = slice(0, len(neighbors)) if rows is None else rows
    k = neighbors.shape[1]
    total = 0.0
    for block in row_chunks(len(neighbors), k * prior.shape[1]):
        p_i = torch.as_tensor(np.asarray(prior[rows.start + block.start:rows.start + block.stop], np.float32))
        p_j = torch.as_tensor(np.asarray(prior, np.float32))[torch.as_tensor(neighbors[block])]
        total += float(torch.einsum("ic,ikc->", p_i, p_j).double())
    sums = all_reduce_sum(np.array([total, float(neighbors.size)]))
    return float(sums[0] / max(sums[1], 1.0))


def neighbor_label_agreement(prior: np.ndarray, labels: np.ndarray, transition: np.ndarray,
                             neighbors: np.ndarray, purity: float, *, rows: Optional[slice] = None
                             ) -> Dict[str, float]:
    """The model check: how often a sample and its neighbour carry the same given label, as the
    model predicts it (``purity * sum_c pi_c sum_j T[c, j]^2 + (1 - purity) * sum_j q_j^2``, pi =
    the prior's class marginal, q = the labels') and as observed; ``model_fit`` = predicted /
    observed (about 1 when the model describes the data; far below when the labels are far more
    consistent than the anchors' view of the images can explain). ``prior`` (N, C) and
    ``labels`` (N,) of all rows, ``neighbors`` (n, k) of the rows ``rows`` (default all)."""
    rows = slice(0, len(neighbors)) if rows is None else rows
    c = transition.shape[0]
    pi = np.zeros(c, np.float64)
    for block in row_chunks(len(prior), c):
        pi += np.asarray(prior[block], np.float64).sum(axis=0)
    pi /= max(len(prior), 1)
    q = np.bincount(labels, minlength=c) / max(len(labels), 1)
    predicted = float(purity * (pi @ (np.asarray(transition, np.float64) ** 2).sum(axis=1)) + (1 - purity) * (q @ q))
    same = float(np.sum(labels[neighbors] == labels[rows, None]))
    sums = all_reduce_sum(np.array([same, float(neighbors.size)]))
    observed = float(sums[0] / max(sums[1], 1.0))
    return {"agreement_predicted": predicted, "agreement_observed": observed,
            "model_fit": predicted / observed if observed > 0 else 1.0}


def label_posterior(prior: np.ndarray, labels: np.ndarray, transition: np.ndarray, *,
                    neighbors: Optional[np.ndarray] = None, neighbor_weight: float = 1.0,
                    purity: float = 1.0, pred_probs: Optional[np.ndarray] = None, pred_probs_weight: float = 0.0,
                    pred_probs_transition: Optional[np.ndarray] = None, all_labels: Optional[np.ndarray] = None
                    ) -> np.ndarray:
    """(n, C) float32 posterior of the true class (see the module docstring, step 3) of n rows:
    their ``prior`` (n, C), given ``labels`` (n,), ``neighbors`` (n, k) (indices into
    ``all_labels`` (N,), default ``labels``), ``pred_probs`` (n, C). Row blocks; the neighbour
    term gathers ``log_mix[:, labels_j]`` (O(n k C)), never an (n, C) x (C, C) product."""
    c = transition.shape[0]
    all_labels = labels if all_labels is None else all_labels
    log_t = torch.as_tensor(np.log(np.maximum(transition, _EPS)).T.copy())  # [j, y] = log T[y, j]
    use_neighbors = neighbors is not None and neighbors.shape[1] > 0 and neighbor_weight > 0
    if use_neighbors:
        # a neighbour shares the true class with probability `purity`, else its label follows
        # the labels' marginal: its label's likelihood is purity * T[y, j] + (1 - purity) * q_j
        marginal = np.bincount(all_labels, minlength=c) / max(len(all_labels), 1)
        log_mix = torch.as_tensor(np.log(np.maximum(purity * transition + (1.0 - purity) * marginal[None, :],
                                                    _EPS)).T.copy())
    use_probs = pred_probs is not None and pred_probs_weight > 0
    if use_probs:
        # a model's softmax is read through its own transition (how it answers for each true class)
        log_g = log_t if pred_probs_transition is None else \
            torch.as_tensor(np.log(np.maximum(pred_probs_transition, _EPS)).T.copy())
    out = np.empty((len(labels), c), np.float32)
    width = c * (1 + (neighbors.shape[1] if use_neighbors else 0))
    for rows in row_chunks(len(labels), width):
        z = torch.log(torch.as_tensor(np.asarray(prior[rows], np.float64)).clamp_min(_EPS))
        z += log_t[torch.as_tensor(np.asarray(labels[rows], np.int64))]
        if use_neighbors:
            nbr_labels = torch.as_tensor(np.asarray(all_labels, np.int64)[neighbors[rows]])
            z += neighbor_weight * log_mix[nbr_labels].mean(dim=1)
        if use_probs:
            z += pred_probs_weight * torch.as_tensor(np.asarray(pred_probs[rows], np.float64)) @ log_g
        out[rows] = torch.softmax(z, dim=1).numpy()
    return out


def choose_changes(post: np.ndarray, labels: np.ndarray, target_precision: Optional[float],
                   allowed: Optional[np.ndarray] = None) -> Tuple[np.ndarray, float]:
    """(N,) bool mask of the labels to change and the lowest posterior among the changes (1.0
    when none change); see the module docstring, step 5. ``allowed`` (N,) bool: only these
    samples may change."""
    best = post.argmax(axis=1)
    cand = np.flatnonzero((best != labels) if allowed is None else (best != labels) & allowed)
    mask = np.zeros(len(labels), bool)
    if cand.size == 0:
        return mask, 1.0
    conf = post[cand, best[cand]].astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    take = len(order)
    if target_precision is not None:
        running = np.cumsum(conf[order]) / np.arange(1, len(order) + 1)
        ok = np.flatnonzero(running >= float(target_precision) - 1e-6)
        take = 0 if ok.size == 0 else int(ok[-1]) + 1
    mask[cand[order[:take]]] = True
    return mask, float(conf[order[take - 1]]) if take else 1.0


# ----------------------------------------------------------------------------- the refiner
@REFINERS.register("posterior")
class PosteriorRefiner(Refiner):
    """The estimated posterior of the true class decides (see the module docstring)."""

    name = "posterior"
    Options = PosteriorOptions
    unused_options = frozenset({"alpha", "threshold"})  # the posterior decides, not a score rule

    def refine(self, evidence: Evidence, *, true_labels: Optional[np.ndarray] = None) -> RefinementResult:
        o: PosteriorOptions = self.options  # type: ignore[assignment]
        if evidence.features is None or evidence.anchor_features is None:
            raise InputError("refiner posterior needs evidence.features and evidence.anchor_features")
        c = evidence.num_classes
        labels = evidence.labels
        counts = np.bincount(evidence.anchor_labels, minlength=c)
        if counts.min() < 2:
            k = int(np.argmin(counts))
            name = f"{k} ({evidence.class_names[k]!r})" if evidence.class_names else str(k)
            raise InputError(f"class {name} has {counts[k]} anchors; refiner posterior needs at least 2 per class")
        seed = evidence.seed if o.seed is None else int(o.seed)
        truth = None if true_labels is None else np.asarray(true_labels)
        clock = StageClock()
        if evidence.fold_ids is None:  # one fixed space: all rows, the features as they are (no copy)
            groups = [(None, evidence.anchor_features)]
        else:  # per-fold spaces: each fold's held-out samples are refined in that fold's space
            groups = [(np.flatnonzero(evidence.fold_ids == k), evidence.anchor_features[k])
                      for k in range(int(evidence.anchor_features.shape[0]))]
        weight = o.pred_probs_weight
        if weight is None:
            weight = SEPARATE_VIEW_WEIGHT if evidence.pred_probs_view == "separate" else 0.0
        # pred_probs are computed (when the evidence computes them on demand) only where they are read
        all_probs = evidence.resolve_pred_probs() if weight > 0 else None
        post = np.zeros((len(labels), c), np.float32)
        spaces: List[Dict[str, Any]] = []
        # too few given labels per class: no label changes whatever the posterior says
        too_little = next((note for rows, _ in groups if (note := minimum_evidence(
            labels if rows is None else labels[rows], c, min_rows=o.min_rows_per_class,
            class_names=evidence.class_names))), None)
        for rows, anchor_features in groups:
            if rows is not None and rows.size == 0:
                continue
            x = UnitRows(evidence.features, index=rows)
            a = l2_normalize(anchor_features)
            group_labels = labels if rows is None else labels[rows]
            pred_probs = None if all_probs is None else \
                np.asarray(all_probs if rows is None else all_probs[rows], np.float32)
            post_rows, transition, stats, graph = self._posterior(
                x, a, group_labels, evidence.anchor_labels, c, pred_probs=pred_probs,
                pred_probs_weight=float(weight), seed=seed, clock=clock,
                true_labels=None if truth is None else (truth if rows is None else truth[rows]),
                self_training="never" if too_little is not None else "if-model-fits")
            # calibrate only a space whose model check passes (a failing one is not used)
            if o.target_precision is not None and o.calibrate_precision and self._model_fits([stats]):
                with clock.stage("calibration"):
                    tau = self._planted_temperature(x, a, group_labels, evidence.anchor_labels, c, transition,
                                                    graph=graph, pred_probs=pred_probs,
                                                    pred_probs_weight=float(weight), seed=seed)
                stats["precision_temperature"] = tau
                if tau is not None:
                    post_rows = temper(post_rows, tau)
            if rows is None:
                post = post_rows
            else:
                post[rows] = post_rows
            spaces.append(stats)
        model_ok = self._model_fits(spaces)
        fits = [space["model_fit"] for space in spaces if "model_fit" in space]
        decided_by = "posterior"
        with clock.stage("decision"):
            # the fallback's pred_probs are computed only when they can decide (not when too few rows)
            fallback = not model_ok and o.on_model_check_failure == "confident-learning" \
                and evidence.has_pred_probs and too_little is None
            if model_ok:
                mask, threshold = choose_changes(post, labels, o.target_precision)
            elif fallback:
                # the anchors do not describe these images: the given labels and pred_probs alone decide
                post = np.asarray(evidence.resolve_pred_probs(), np.float32)
                _, flagged = confident_learning_correction(labels, post, filter_by=FALLBACK_FILTER)
                mask, threshold = choose_changes(post, labels, o.target_precision, allowed=flagged)
                decided_by = "confident-learning"
            else:  # do no harm: the evidence does not describe these images
                mask, threshold = np.zeros(len(labels), bool), 1.0
                decided_by = "none"
            if too_little is not None:  # do no harm: T cannot be estimated from so few rows
                mask, threshold, decided_by = np.zeros(len(labels), bool), 1.0, "none"
            best = post.argmax(axis=1)
            rows_all = np.arange(len(labels))
            best_score = post[rows_all, best]
        decision = Decision(
            decided_by, model_check="passed" if model_ok else (
                f"failed: neighbours share given labels {1 / min(fits):.1f}x more often than the "
                f"model predicts (fit {min(fits):.2f} < min_model_fit {o.min_model_fit}); the "
                f"anchors do not describe these images, " + (
                    f"confident learning on the given labels and pred_probs changed "
                    f"{int(mask.sum())} labels" if decided_by == "confident-learning" else
                    "no label was changed")),
            model_fit=min(fits) if fits else None, minimum_evidence=too_little or "met",
            estimated_precision=float(best_score[mask].mean()) if mask.any() else None,
            target_precision=o.target_precision, lowest_changed_score=threshold if mask.any() else None,
            neighbor_graph=spaces[0].get("neighbor_graph") if len(spaces) == 1 else
            [space.get("neighbor_graph") for space in spaces])
        result = RefinementResult(labels=labels, refined_labels=np.where(mask, best, labels), best_class=best,
                                  best_score=best_score, given_score=post[rows_all, labels], decision=decision,
                                  scores=post if o.keep_scores else None)
        info: Dict[str, Any] = spaces[0] if len(spaces) == 1 else {"spaces": spaces}
        if truth is not None and len(spaces) > 1:
            info["argmax_label_acc"] = float(np.mean(best == truth))
        result.info.update(refiner=self.name, preset=self.name, **info, pred_probs_weight=float(weight),
                           pred_probs=evidence.pred_probs, stages=clock.records, **evidence.description)
        return result

    def _posterior(self, x: UnitRows, a: np.ndarray, labels: np.ndarray, anchor_labels: np.ndarray, c: int, *,
                   pred_probs: Optional[np.ndarray], pred_probs_weight: float, seed: int,
                   true_labels: Optional[np.ndarray], clock: Optional[StageClock] = None,
                   graph: Optional[np.ndarray] = None, self_training: str = "always"
                   ) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any], Optional[np.ndarray]]:
        """The (N, C) posterior of the true class of the rows ``x`` (N, D) given their ``labels``
        (N,), from anchors ``a`` (M, D, unit rows) in the same space; the estimated (C, C)
        transition matrix; its facts (penalty, T, neighbour purity, graph, per-round
        temperatures); and the (N, k) neighbour graph (``graph``: reuse this one).

        ``self_training``: ``always`` runs the options' rounds; ``if-model-fits`` skips them when
        the model check (made on the anchor-only prior, before any round) fails, since the
        posterior then decides nothing; ``never`` skips them (the anchor-only posterior).

        Every pass over ``x`` streams row blocks; under a process group each process works on
        its share of the rows and every process returns all N rows."""
        o: PosteriorOptions = self.options  # type: ignore[assignment]
        clock = clock if clock is not None else StageClock()
        n = len(x)
        share = row_share(n, *process_group())
        pca_cache: Dict[Any, Any] = {}  # one eigendecomposition for the graph's and the heads' projections
        x_heads, a_heads, head_space = (x, a, None)
        with clock.stage("anchor head"):
            if len(a) * 2 * c * x.dim > ANCHOR_HEAD_WORK and o.head_dims != 0:
                # many anchors x classes: the anchor head and its prior read the heads' projected rows
                dims = o.head_dims or head_projection_dims(n, int(o.folds), c, x.dim) or 512
                x_heads, a_heads, head_space = head_rows(x, a, c, int(o.folds), dims, seed, pca_cache)
            head, temperature, penalty, confusion = broadcast_object(
                anchor_head(a_heads, anchor_labels, c, penalty=o.penalty, seed=seed))
        w_head = torch.as_tensor(head[0].T.copy())
        b_head = torch.as_tensor(head[1])
        with clock.stage("prior"):
            prior_share = held_out_logits(x_heads, w_head, b_head, num_classes=c, scale=LOGIT_SCALE, span=share,
                                          transform=lambda z, t=temperature: torch.softmax(z / t, dim=1))
            prior = all_gather_rows(prior_share, n)
            transition = transition_matrix(prior, labels, c, confusion=confusion if o.deconvolve else None)
        graph_info: Optional[Dict[str, Any]] = None
        if o.neighbors > 0 and n > 1:
            with clock.stage("neighbours"):
                if graph is None:
                    built = knn_graph(x, o.neighbors, method=o.neighbor_graph, span=share, seed=seed,
                                      pca_cache=pca_cache, target_recall=float(o.neighbor_recall))
                    graph_info = built.describe()
                    graph = all_gather_rows(built.indices, n)
                purity = neighbor_purity(prior, graph[share], rows=share)
        else:
            graph, purity = None, 0.0
        if pred_probs_weight == 0:
            pred_probs = None
        pred_probs_transition = None if pred_probs is None else transition_matrix(
            prior, labels, c, confusion=confusion if o.deconvolve else None, soft_observations=pred_probs)

        def posterior(prior_rows: np.ndarray) -> np.ndarray:
            """The posterior of this process's rows from their prior."""
            return label_posterior(prior_rows, labels[share], transition,
                                   neighbors=None if graph is None else graph[share],
                                   neighbor_weight=o.neighbor_weight, purity=purity,
                                   pred_probs=None if pred_probs is None else pred_probs[share],
                                   pred_probs_weight=pred_probs_weight, pred_probs_transition=pred_probs_transition,
                                   all_labels=labels)

        with clock.stage("posterior"):
            post_share = posterior(prior_share)
        del prior_share
        rounds: List[Dict[str, Any]] = []
        self._log(rounds, 0, post_share, labels[share], None if true_labels is None else true_labels[share],
                  temperature)
        # the model check reads only the anchor-only prior, T and the graph: it is known here
        agreement = None if graph is None else \
            neighbor_label_agreement(prior, labels, transition, graph[share], purity, rows=share)
        num_rounds = int(o.self_training_rounds)
        skipped = None
        if num_rounds and self_training == "never":
            num_rounds, skipped = 0, "too few given labels per class: no label can change"
        elif num_rounds and self_training == "if-model-fits" and agreement is not None \
                and not self._model_fits([agreement]):
            num_rounds, skipped = 0, "the model check failed: the posterior does not decide"
        anchor_targets = np.asarray(anchor_labels, np.int64)
        anchor_head_space = head_space
        if num_rounds > 0 and head_space is None:
            with clock.stage("self-training"):
                x_heads, a_heads, head_space = head_rows(x, a, c, int(o.folds), o.head_dims, seed, pca_cache)
        fold = _folds(n, o.folds, seed)
        anchor_fold = _folds(len(a), o.folds, seed + 1)
        for r in progress_bar(range(1, num_rounds + 1), desc="posterior rounds", unit="round",
                              enabled=None if num_rounds > 1 else False):
            with clock.stage("self-training"):
                # every fold's head in one pass per step: head k trains on the rows and anchors of the
                # other folds (soft targets: the posterior; anchors: their class)
                problem = HeadProblem(x_heads, post_share, num_heads=o.folds, num_classes=c, folds=fold,
                                      extra=(a_heads, anchor_targets, anchor_fold), scale=LOGIT_SCALE, penalty=penalty)
                w, b = fit_heads_lbfgs(problem, int(o.head_steps))
                anchor_logits = held_out_logits(a_heads, w, b, num_classes=c, scale=LOGIT_SCALE, folds=anchor_fold)
                temperature = fit_temperature(anchor_logits, anchor_labels)
                prior_share = held_out_logits(x_heads, w, b, num_classes=c, scale=LOGIT_SCALE, folds=fold, span=share,
                                              transform=lambda z, t=temperature: torch.softmax(z / t, dim=1))
            with clock.stage("posterior"):
                post_share = posterior(prior_share)
            self._log(rounds, r, post_share, labels[share], None if true_labels is None else true_labels[share],
                      temperature)
        post = all_gather_rows(post_share, n)
        stats: Dict[str, Any] = {"rounds": rounds, "penalty": penalty, "transition": transition.round(4).tolist(),
                                 "transition_diagonal": float(np.mean(np.diag(transition))), "neighbor_purity": purity}
        if graph_info is not None:
            stats["neighbor_graph"] = graph_info
        if head_space is not None:
            stats["head_space"] = head_space
        if anchor_head_space is not None:
            stats["anchor_head_space"] = anchor_head_space
        if skipped is not None:
            stats["self_training_skipped"] = skipped
        if agreement is not None:
            stats.update(agreement)
        return post, transition, stats, graph

    def _model_fits(self, spaces: List[Dict[str, Any]]) -> bool:
        """The model check over the facts of every space: each ``model_fit`` >= ``min_model_fit``."""
        limit = self.options.min_model_fit  # type: ignore[attr-defined]
        return limit is None or all(space["model_fit"] >= float(limit) for space in spaces if "model_fit" in space)

    def _planted_temperature(self, x: UnitRows, a: np.ndarray, labels: np.ndarray, anchor_labels: np.ndarray,
                             c: int, transition: np.ndarray, *, graph: Optional[np.ndarray],
                             pred_probs: Optional[np.ndarray], pred_probs_weight: float, seed: int) -> Optional[float]:
        """The temperature that calibrates the posterior, measured on planted samples: each half of
        the anchors in turn joins the real images (``x`` (N, D), ``labels`` (N,)) with given labels
        drawn from the estimated ``transition`` (C, C), and the other half serves as anchors; the
        whole posterior runs again and the temperature of ``softmax(log r / t)`` with the least
        negative log-likelihood of the planted samples' true classes is returned (None when a
        class has fewer than 4 anchors). Two more posterior passes; the real rows keep their
        neighbours (``graph`` (N, k)), the planted rows get theirs among all rows. Nothing is
        copied: the planted rows are appended to a view of the features."""
        if np.bincount(anchor_labels, minlength=c).min() < 4:
            return None
        half = _anchor_halves(anchor_labels, c, seed + 2)
        rng = np.random.default_rng(seed + 3)
        rows = transition[anchor_labels] / transition[anchor_labels].sum(axis=1, keepdims=True)
        planted_labels = (rng.random((len(a), 1)) > np.cumsum(rows, axis=1)).sum(axis=1).clip(0, c - 1)
        log_post, truth = [], []
        for k in (0, 1):
            plant = half == k
            stacked = UnitRows(x.base, index=x.index, extra=a[plant])
            probs = None if pred_probs is None else np.vstack(
                [pred_probs, np.full((int(plant.sum()), c), 1.0 / c, np.float32)])  # no view of planted rows
            stacked_graph = None
            if graph is not None:
                planted_rows = np.arange(len(x), len(stacked))
                stacked_graph = np.vstack([graph, exact_knn(stacked, graph.shape[1], queries=planted_rows)])
            post, _, _, _ = self._posterior(stacked, a[~plant], np.concatenate([labels, planted_labels[plant]]),
                                            anchor_labels[~plant], c, pred_probs=probs,
                                            pred_probs_weight=pred_probs_weight, seed=seed, true_labels=None,
                                            graph=stacked_graph)
            log_post.append(np.log(np.maximum(post[len(x):], _EPS)))
            truth.append(anchor_labels[plant])
        return fit_temperature(np.vstack(log_post), np.concatenate(truth))

    @staticmethod
    def _log(rounds: List[Dict[str, Any]], r: int, post: np.ndarray, labels: np.ndarray,
             true_labels: Optional[np.ndarray], temperature: float) -> None:
        """One round's facts (counts over every process's rows)."""
        best = post.argmax(axis=1)
        sums = all_reduce_sum(np.array([float(np.sum(best != labels)),
                                        float(np.sum(best == true_labels)) if true_labels is not None else 0.0,
                                        float(len(labels))]))
        stats: Dict[str, Any] = {"round": r, "temperature": temperature, "candidates": int(sums[0])}
        if true_labels is not None:
            stats["argmax_label_acc"] = float(sums[1] / max(sums[2], 1.0))
        rounds.append(stats)

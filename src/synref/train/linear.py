"""Linear softmax heads on frozen features, fitted by streaming over row blocks.

One engine (:class:`HeadProblem`: K heads, head k trained on the rows whose fold is not k)
serves both the cross-fitted evidence (:func:`cross_fit_linear`: hard labels, full-batch Adam
with weight decay, the out-of-sample ``pred_probs``) and the ``posterior`` refiner's heads (soft
targets, L-BFGS with an L2 penalty). Every pass reads the features (N, D), which may be a
read-only memory map, in blocks of :data:`~synref.arrays.BLOCK_ELEMENTS` floats; the loss and
its gradient are computed per block by hand (``softmax - target``), so no (N, K x C) tensor or
autograd graph is ever held, and all K heads cost one pass over the rows. Under a
``torch.distributed`` process group every process takes its share of the rows and the loss
and gradient are all-reduced, so each process takes the same optimiser steps (up to the order
of summation).

Features are L2-normalised rows and the logits are ``scale * x @ W^T + b`` (a fixed inverse
temperature), so one learning rate works for any encoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import arrays
from ..arrays import UnitRows, as_tensor
from ..config import ConfigMixin
from ..distributed import all_reduce_sum, process_group, row_share
from ..errors import InputError
from .loop import fold_splits

__all__ = ["LinearHeadConfig", "fit_linear_head", "cross_fit_linear", "HeadProblem", "fit_heads_lbfgs",
           "fit_heads_adam", "held_out_logits", "principal_rows", "CROSS_FIT_LARGE_WORK"]

Rows = Union[UnitRows, np.ndarray]


#: a row block of the heads' pass holds this many times :data:`~synref.arrays.BLOCK_ELEMENTS`
#: floats (32 MB): larger GEMMs run faster.
HEAD_BLOCK_FACTOR = 2


@dataclass
class LinearHeadConfig(ConfigMixin):
    """``steps`` full-batch Adam steps at ``lr`` with L2 penalty ``weight_decay`` on the weights;
    logits ``= scale * normalize(x) @ W + b``."""

    config_name = "linear head config"

    steps: int = 100
    lr: float = 0.01
    weight_decay: float = 1e-4
    scale: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.weight_decay < 0 or self.scale <= 0:
            raise InputError(f"{self.config_name}: need steps >= 1, lr > 0, weight_decay >= 0, scale > 0; "
                             f"got {self}")


#: :func:`cross_fit_linear` above this many multiply-adds per pass of its full heads (N x folds x
#: C x D; e.g. 10^5 rows x 4 folds x 1000 classes x 1280 dims = 5 x 10^11): the heads read the
#: rows on their :data:`CROSS_FIT_LARGE_DIMS` leading principal components and are fitted by
#: :data:`CROSS_FIT_LARGE_STEPS` L-BFGS iterations (about 25 passes) instead of ``config.steps``
#: Adam steps (100 passes): 100 Adam passes of the full heads there take about 55 min on 2 cores,
#: 25 L-BFGS passes on 256 components about 2.5 min. Below it nothing changes.
CROSS_FIT_LARGE_WORK = 1 << 38
CROSS_FIT_LARGE_DIMS = 256
CROSS_FIT_LARGE_STEPS = 20


def principal_rows(x: UnitRows, dims: int, seed: int, *, pca_cache: Optional[Dict[Any, Any]] = None
                   ) -> Tuple[UnitRows, np.ndarray, Dict[str, Any]]:
    """``x`` (N, D) projected on its ``dims`` leading principal components, as (N, dims) unit
    rows (in memory: N x dims x 4 bytes), one streamed pass; the basis (D, dims) (project other
    rows, e.g. anchors, with ``rows @ basis`` then normalise); and the facts (dims, the mean
    squared length of the unit rows the projection keeps, over the first 20,000 rows).
    ``pca_cache``: :func:`synref.neighbors.pca_basis`'s (one eigendecomposition per row set)."""
    from ..neighbors import pca_basis

    n = len(x)
    _, basis = pca_basis(x, int(dims), seed, cache=pca_cache)                          # (D, dims)
    projected = np.empty((n, int(dims)), np.float32)
    squared: List[np.ndarray] = []
    for start, stop, block in x.blocks():
        rows = block @ basis
        if start < 20_000:
            squared.append(np.sum(rows[:20_000 - start] ** 2, axis=1))
        # unit rows once, here, not scaled again in every pass of the heads
        projected[start:stop] = rows / np.maximum(arrays.row_norms(rows), 1e-12)[:, None]
    kept = float(np.mean(np.concatenate(squared))) if squared else 0.0
    return UnitRows(projected), basis, {"dims": int(dims), "squared_length_kept": round(kept, 4)}


def _unit_rows(features: Rows) -> UnitRows:
    if isinstance(features, UnitRows):
        return features
    x = features if isinstance(features, np.ndarray) else np.asarray(features)
    if x.ndim != 2:
        raise InputError(f"features: expected (N, D), got shape {tuple(x.shape)}")
    return UnitRows(x)


@dataclass
class _Part:
    """Rows of one source (the features, or the extra rows such as anchors) in a head problem."""

    x: UnitRows
    targets: np.ndarray          # (n,) int64 labels or (n, C) float32 soft targets (or of the span only)
    folds: Optional[np.ndarray]  # (n,) int; row i trains every head but head folds[i]; None: every head
    span: slice                  # the rows of this process
    offset: int                  # the row of targets[0]: 0, or span.start when only the span's are held

    def targets_of(self, start: int, stop: int) -> np.ndarray:
        return self.targets[start - self.offset:stop - self.offset]


class HeadProblem:
    """K linear softmax heads over the same rows (C classes each): head k is trained on the rows
    whose fold is not k (``folds`` None: on every row; a fold of -1: the row trains every head).

    ``targets`` are (N,) int labels or (N, C) soft targets (a row whose targets sum to 0 does not
    count); under a process group they may be those of this process's share of the rows only. Head k's loss is the summed cross-entropy of its rows over ``n_k`` (their target mass)
    plus ``penalty / n_k * |W_k|^2`` (``penalty`` mode "per-row") or ``weight_decay * |W_unscaled|^2``
    (mode "decay", as :func:`cross_fit_linear` has always had it). ``extra`` = (rows, targets,
    folds) more rows of the same problem (anchors).
    """

    def __init__(self, x: Rows, targets: np.ndarray, *, num_heads: int, num_classes: int,
                 folds: Optional[np.ndarray] = None, extra: Optional[Tuple[Rows, np.ndarray, Optional[np.ndarray]]] = None,
                 scale: float = 10.0, penalty: float = 0.0, weight_decay: float = 0.0) -> None:
        rank, world = process_group()
        self.num_heads, self.num_classes, self.scale = int(num_heads), int(num_classes), float(scale)
        self.penalty, self.weight_decay = float(penalty), float(weight_decay)
        self.parts = []
        for rows, t, f in [(x, targets, folds)] + ([extra] if extra is not None else []):
            rows = _unit_rows(rows)
            t = np.asarray(t)
            share = row_share(len(rows), rank, world)
            # targets of every row, or (under a process group) of this process's share only
            offset = 0 if len(t) == len(rows) else share.start
            if (len(t) != len(rows) and len(t) != share.stop - share.start) or (f is not None and len(f) != len(rows)):
                raise InputError(f"head problem: {len(rows)} rows, {len(t)} targets"
                                 + (f", {len(f)} folds" if f is not None else ""))
            self.parts.append(_Part(rows, t, None if f is None else np.asarray(f, np.int64), share, offset))
        self.dim = self.parts[0].x.dim
        mass = np.zeros(self.num_heads, np.float64)
        for part in self.parts:
            mass += self._mass(part)
        self.mass = np.maximum(all_reduce_sum(mass), 1.0)

    def _mass(self, part: _Part) -> np.ndarray:
        """(K,) target mass of this process's rows of ``part`` in each head."""
        lo, hi = part.span.start, part.span.stop
        t = part.targets_of(lo, hi)
        row_mass = np.ones(hi - lo) if t.ndim == 1 else np.asarray(t, np.float64).sum(axis=1)
        if part.folds is None:
            return np.full(self.num_heads, row_mass.sum())
        f = part.folds[lo:hi]
        return np.array([row_mass[f != k].sum() for k in range(self.num_heads)])

    def _block_rows(self) -> int:
        return max(self.dim, self.num_heads * self.num_classes)

    def loss_and_grad(self, w: torch.Tensor, b: torch.Tensor) -> Tuple[float, torch.Tensor, torch.Tensor]:
        """(loss, dL/dW (K*C, D), dL/db (K*C,)) at ``w`` (K*C, D), ``b`` (K*C,): one pass over the
        rows in blocks, all-reduced over processes."""
        k, c = self.num_heads, self.num_classes
        grad_w = torch.zeros_like(w)
        grad_b = torch.zeros_like(b)
        loss = torch.zeros((), dtype=torch.float64)
        inv_mass = torch.as_tensor(1.0 / self.mass, dtype=torch.float32)
        every = torch.arange(k)
        for part in self.parts:
            for start, stop, block in part.x.blocks(self._block_rows(), span=part.span,
                                                      elements=HEAD_BLOCK_FACTOR * arrays.BLOCK_ELEMENTS):
                xb = as_tensor(block)
                t = part.targets_of(start, stop)
                # one product for all heads (fewer, larger GEMMs and no gathered row copies beat
                # computing only the K-1 heads a row trains); the head that holds the row out gets weight 0
                z = F.linear(xb, self.scale * w, b).view(len(xb), k, c)
                logp = F.log_softmax(z, dim=2)
                weight = inv_mass[None, :].expand(len(xb), k)
                if part.folds is not None:
                    fold = torch.as_tensor(np.asarray(part.folds[start:stop], np.int64))
                    weight = weight * (every[None, :] != fold[:, None])
                if t.ndim == 1:
                    labels = torch.as_tensor(t, dtype=torch.int64).view(-1, 1, 1).expand(-1, k, 1)
                    ce = -logp.gather(2, labels).squeeze(2)                                    # (B, K)
                    grad = logp.exp()
                    grad.scatter_add_(2, labels, torch.full((len(xb), k, 1), -1.0))
                else:
                    soft = torch.as_tensor(np.asarray(t, np.float32))
                    ce = -(logp * soft[:, None, :]).sum(dim=2)
                    grad = logp.exp() * soft.sum(dim=1)[:, None, None] - soft[:, None, :]
                loss += (ce * weight).sum(dtype=torch.float64)
                grad = (grad * weight[:, :, None]).reshape(len(xb), k * c)
                grad_w += self.scale * (grad.T @ xb)
                grad_b += grad.sum(dim=0)
        loss_value = float(all_reduce_sum(loss.view(1))[0])
        grad_w = all_reduce_sum(grad_w)
        grad_b = all_reduce_sum(grad_b)
        if self.penalty:
            per_head = torch.as_tensor(self.penalty / self.mass, dtype=torch.float32).repeat_interleave(c)[:, None]
            loss_value += float((per_head * w.detach() ** 2).sum())
            grad_w = grad_w + 2.0 * per_head * w.detach()
        if self.weight_decay:
            loss_value += self.weight_decay * float((w.detach() ** 2).sum())
            grad_w = grad_w + 2.0 * self.weight_decay * w.detach()
        return loss_value, grad_w, grad_b

    def zeros(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zero weights (K*C, D) and biases (K*C,): the deterministic start."""
        kc = self.num_heads * self.num_classes
        return torch.zeros(kc, self.dim), torch.zeros(kc)


def lbfgs_minimize(evaluate: Callable[[torch.Tensor], Tuple[float, torch.Tensor]], x0: torch.Tensor,
                   max_iter: int, *, history_size: int = 10, lr: float = 1.0, tolerance_grad: float = 1e-7,
                   tolerance_change: float = 1e-9) -> torch.Tensor:
    """Minimise a smooth function of the flat vector ``x0`` (P,) by L-BFGS with the strong Wolfe
    line search: the steps of ``torch.optim.LBFGS(lr, max_iter, history_size,
    line_search_fn="strong_wolfe").step`` (at most ``max_iter * 5 // 4`` evaluations, the same
    stopping rules, the same arithmetic), without the optimiser object, whose first construction
    in a process imports ``torch._dynamo`` (about 2 s). ``evaluate(x)`` returns (loss, gradient (P,)).
    Returns the last point (P,)."""
    from torch.optim.lbfgs import _strong_wolfe  # the line search itself, a plain function

    max_eval = int(max_iter) * 5 // 4
    x = x0.detach().clone()
    loss, grad = evaluate(x)
    evals = 1
    if grad.abs().max() <= tolerance_grad:
        return x
    dirs: List[torch.Tensor] = []
    steps: List[torch.Tensor] = []
    rho: List[torch.Tensor] = []
    alphas: List[Any] = [None] * history_size
    direction, step, h_diag, prev_grad = grad.neg(), None, 1.0, None
    for it in range(1, int(max_iter) + 1):
        if it > 1:  # the two-loop recursion over the kept curvature pairs
            change = grad.sub(prev_grad)
            moved = direction.mul(step)
            curvature = change.dot(moved)
            if curvature > 1e-10:
                if len(dirs) == history_size:
                    del dirs[0], steps[0], rho[0]
                dirs.append(change)
                steps.append(moved)
                rho.append(1.0 / curvature)
                h_diag = curvature / change.dot(change)
            q = grad.neg()
            for i in range(len(dirs) - 1, -1, -1):
                alphas[i] = steps[i].dot(q) * rho[i]
                q.add_(dirs[i], alpha=-alphas[i])
            direction = r = torch.mul(q, h_diag)
            for i in range(len(dirs)):
                beta = dirs[i].dot(r) * rho[i]
                r.add_(steps[i], alpha=alphas[i] - beta)
        prev_grad = grad.clone()
        prev_loss = loss
        step = min(1.0, 1.0 / grad.abs().sum()) * lr if it == 1 else lr
        slope = grad.dot(direction)
        if slope > -tolerance_change:
            break

        def along(start: List[torch.Tensor], t: Any, d: torch.Tensor) -> Tuple[float, torch.Tensor]:
            return evaluate(start[0].add(d, alpha=t))

        loss, grad, step, used = _strong_wolfe(along, [x], step, direction, loss, grad, slope,
                                               max_ls=max_eval - evals)
        x = x.add(direction, alpha=step)
        evals += used
        if it == max_iter or evals >= max_eval or grad.abs().max() <= tolerance_grad:
            break
        if direction.mul(step).abs().max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
            break
    return x


def fit_heads_lbfgs(problem: HeadProblem, steps: int, init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """All heads of ``problem`` by full-batch L-BFGS (:func:`lbfgs_minimize`: strong Wolfe line
    search, history 10) from ``init`` (default zero): the heads' losses are summed (they share no
    parameter). Returns W (K*C, D) and b (K*C,) (W unscaled: logits are ``scale * x @ W^T + b``)."""
    w0, b0 = init if init is not None else problem.zeros()
    shape, size = w0.shape, w0.numel()

    def evaluate(flat: torch.Tensor) -> Tuple[float, torch.Tensor]:
        loss, gw, gb = problem.loss_and_grad(flat[:size].view(shape), flat[size:])
        # the loss as float32, as torch.optim.LBFGS reads a closure's float32 tensor
        return float(torch.tensor(loss, dtype=torch.float32)), torch.cat([gw.reshape(-1), gb.reshape(-1)])

    flat = lbfgs_minimize(evaluate, torch.cat([w0.detach().reshape(-1), b0.detach().reshape(-1)]), int(steps))
    return flat[:size].view(shape).clone(), flat[size:].clone()


def fit_heads_adam(problem: HeadProblem, steps: int, lr: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """All heads of ``problem`` by ``steps`` full-batch Adam steps at ``lr`` from zero (Adam is per
    parameter: each head moves exactly as if fitted alone). Returns W (K*C, D), b (K*C,)."""
    w, b = problem.zeros()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(int(steps)):
        _, gw, gb = problem.loss_and_grad(w.detach(), b.detach())
        w.grad, b.grad = gw, gb
        opt.step()
    return w.detach(), b.detach()


def held_out_logits(x: Rows, w: torch.Tensor, b: torch.Tensor, *, num_classes: int, scale: float,
                    folds: Optional[np.ndarray] = None, span: Optional[slice] = None,
                    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> np.ndarray:
    """(n, C) float32 logits ``scale * x @ W_k^T + b_k`` of the rows ``span`` (default all) of
    ``x``, each from head ``k = folds[i]`` (the head that held row i out; ``folds`` None: head 0);
    ``transform`` (e.g. a softmax) is applied per block."""
    rows = _unit_rows(x)
    span = slice(0, len(rows)) if span is None else span
    c = int(num_classes)
    k = w.shape[0] // c
    out = np.empty((span.stop - span.start, c), np.float32)
    w_heads, b_heads = w.view(k, c, -1), b.view(k, c)
    with torch.no_grad():
        for start, stop, block in rows.blocks(c, span=span):
            xb = as_tensor(block)
            head_of = np.zeros(stop - start, np.int64) if folds is None else np.asarray(folds[start:stop], np.int64)
            z = torch.empty(stop - start, c)
            for head in np.unique(head_of):  # each row through the one head that held it out
                sel = torch.as_tensor(np.flatnonzero(head_of == head))
                z[sel] = F.linear(xb[sel], scale * w_heads[int(head)], b_heads[int(head)])
            out[start - span.start:stop - span.start] = (transform(z) if transform is not None else z).numpy()
    return out


def fit_linear_head(features: Rows, labels: np.ndarray, num_classes: int,
                    config: Optional[LinearHeadConfig] = None) -> torch.nn.Linear:
    """A ``Linear(D, num_classes)`` (weights already multiplied by ``config.scale``) fitted to
    ``labels`` (N,) on ``features`` (N, D). Deterministic (zero initialisation, full batch)."""
    cfg = config or LinearHeadConfig()
    x = _unit_rows(features)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(x):
        raise InputError(f"labels: {len(y)} for {len(x)} feature rows")
    problem = HeadProblem(x, y, num_heads=1, num_classes=num_classes, scale=cfg.scale,
                          weight_decay=cfg.weight_decay)
    w, b = fit_heads_adam(problem, cfg.steps, cfg.lr)
    head = torch.nn.Linear(x.dim, num_classes)
    with torch.no_grad():
        head.weight.copy_(cfg.scale * w)
        head.bias.copy_(b)
    return head


def cross_fit_linear(features: Rows, labels: np.ndarray, *, num_classes: int, folds: int = 4,
                     seed: int = 0, config: Optional[LinearHeadConfig] = None) -> np.ndarray:
    """Out-of-sample softmax ``(N, num_classes)`` float32: row i from the head fitted on the
    other folds (the same fold split as :func:`synref.train.cross_fit`). The fold heads are
    fitted together, one streamed pass over the features per Adam step (:class:`HeadProblem`);
    under a process group the rows are shared and every process gets all N rows back. Above
    :data:`CROSS_FIT_LARGE_WORK` multiply-adds per pass (many rows x many classes) the heads
    read principal components and are fitted by L-BFGS (the constant's note says why)."""
    from ..distributed import all_gather_rows

    cfg = config or LinearHeadConfig()
    labels = np.asarray(labels, dtype=np.int64)
    x = _unit_rows(features)
    if len(labels) != len(x):
        raise InputError(f"labels: {len(labels)} for {len(x)} feature rows")
    if not 2 <= folds <= len(labels) // 2:
        raise InputError(f"folds must be in [2, {len(labels) // 2}] for {len(labels)} samples, got {folds}")
    fold_of = np.empty(len(labels), np.int64)
    for k, (_, held_idx) in enumerate(fold_splits(labels, folds, seed)):
        fold_of[held_idx] = k
    large = len(x) * folds * num_classes * x.dim > CROSS_FIT_LARGE_WORK and x.dim > CROSS_FIT_LARGE_DIMS
    if large:
        x, _, _ = principal_rows(x, CROSS_FIT_LARGE_DIMS, seed)
    problem = HeadProblem(x, labels, num_heads=folds, num_classes=num_classes, folds=fold_of, scale=cfg.scale,
                          weight_decay=cfg.weight_decay)
    w, b = fit_heads_lbfgs(problem, CROSS_FIT_LARGE_STEPS) if large else fit_heads_adam(problem, cfg.steps, cfg.lr)
    share = problem.parts[0].span
    probs = held_out_logits(x, w, b, num_classes=num_classes, scale=cfg.scale, folds=fold_of, span=share,
                            transform=lambda z: torch.softmax(z, dim=1))
    return all_gather_rows(probs, len(labels))

"""LRA-diffusion (Chen et al., NeurIPS 2023) over precomputed frozen encoder features.

Label-Retrieval-Augmented diffusion: a conditional diffusion model over label vectors
``y in R^C`` (one-hot targets), conditioned on a frozen encoder's features ``f_p`` (computed
elsewhere in synref; passed in as an (N, D) array). Behaviour follows the authors' reference
(github puar-playground/LRA-diffusion):

* cosine beta schedule (s = 0.008, betas clipped at 0.999), T = 1000;
* noise predictor: ``Linear(C + D -> H)`` scaled by a learned per-timestep embedding
  (``Embedding(T + 1, H)`` initialised U(0, 1)), BatchNorm + softplus, multiplied element-wise by
  a BatchNorm'd image embedding; two more timestep-scaled Linear + BatchNorm + softplus layers;
  final ``Linear(H -> C)``;
* label retrieval: k = 10 Euclidean nearest neighbours (self excluded) in f_p space; candidates
  = own noisy label + the neighbours' noisy labels; each step one candidate is drawn uniformly as
  y_0 and the sample's loss weight is the number of candidates equal to it, normalised over the
  batch; loss ``sum_i w_i * mean_c (eps - eps_theta)^2``;
* antithetic timesteps (t and T-1-t), Adam, gradient clipping at 1.0, linear warm-up then
  half-cosine learning rate updated every iteration;
* validation every 5 epochs from the end of warm-up, best-validation model kept;
* inference: deterministic DDIM (eta = 0) over the uniform 10-step grid ``{1, 101, ..., 901}``
  from ``y_T = 0``; the predicted class is the component closest to 1.

Deviation (documented): the reference computes the image embedding that multiplies the first
layer with a separate ResNet on the raw images. Here only the features exist, so that embedding
is a trainable ``Linear(D -> H)`` on f_p (then the model's BatchNorm, as in the reference).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..arrays import as_tensor
from ..config import ConfigMixin
from ..errors import InputError
from ..optional import require
from ..progress import progress
from ..validation import as_labels
from .checkpoint import LoopCheckpoint, checkpointing, tensor_state

__all__ = [
    "LRAConfig",
    "LRADiffusion",
    "LRAResult",
    "cosine_beta_schedule",
    "ddim_timesteps",
    "knn_label_candidates",
    "sample_candidate_labels",
    "train_lra",
    "predict_lra",
    "weighted_noise_loss",
]


@dataclass
class LRAConfig(ConfigMixin):
    """Options of :func:`train_lra` / :func:`predict_lra`.

    ``cosine_epochs``: length of the half-cosine learning-rate cycle (None: ``epochs``). The
    reference code hard-codes 1000 while training 200 epochs (lr never decays below ~0.7x);
    :meth:`paper` reproduces that.
    """

    config_name = "lra config"

    timesteps: int = 1000
    k: int = 10
    ddim_steps: int = 10
    hidden: int = 512
    epochs: int = 200
    batch_size: int = 200
    lr: float = 1e-3
    warmup_epochs: int = 5
    cosine_epochs: Optional[int] = None
    grad_clip: float = 1.0
    eval_every: int = 5
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def paper(cls) -> "LRAConfig":
        """The authors' CIFAR settings (train_CIFAR.py defaults)."""
        return cls(timesteps=1000, k=10, ddim_steps=10, hidden=512, epochs=200, batch_size=200,
                   lr=1e-3, warmup_epochs=5, cosine_epochs=1000, grad_clip=1.0, eval_every=5)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("timesteps", "k", "ddim_steps", "hidden", "epochs", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{self.config_name}: {name} must be >= 1, got {getattr(self, name)}")
        if self.ddim_steps > self.timesteps:
            raise InputError(f"{self.config_name}: ddim_steps ({self.ddim_steps}) > timesteps "
                             f"({self.timesteps})")
        if self.lr <= 0:
            raise InputError(f"{self.config_name}: lr must be > 0, got {self.lr}")
        if self.warmup_epochs < 0:
            raise InputError(f"{self.config_name}: warmup_epochs must be >= 0")


@dataclass
class LRAResult:
    """``model``: the trained :class:`LRADiffusion` (best-validation weights when validation data
    was given, else the last epoch's), in eval mode. ``history``: one dict per epoch (epoch, loss,
    lr, and val_acc on evaluated epochs)."""

    model: "LRADiffusion"
    best_epoch: int
    best_val_acc: Optional[float]
    history: List[Dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- schedule

def cosine_beta_schedule(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """(T,) float32 betas: ``beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)`` with
    ``abar(u) = cos((u + s) / (1 + s) * pi / 2)^2`` (Nichol & Dhariwal; as the reference)."""

    def abar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1.0 - abar((i + 1) / timesteps) / abar(i / timesteps), max_beta)
             for i in range(timesteps)]
    return torch.tensor(betas, dtype=torch.float32)


def ddim_timesteps(timesteps: int, ddim_steps: int) -> np.ndarray:
    """Uniform DDIM grid as in the reference: ``range(0, T, T // S) + 1`` (ascending)."""
    stride = timesteps // ddim_steps
    return np.arange(0, timesteps, stride, dtype=np.int64) + 1


# --------------------------------------------------------------------------- kNN retrieval

def _as_float_tensor(x, name: str) -> torch.Tensor:
    t = as_tensor(x)
    if t.ndim != 2:
        raise InputError(f"{name}: expected a 2-D (N, D) array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: contains NaN or inf")
    return t


def _knn_exact(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(N, k) indices of the k nearest other samples (Euclidean), ties broken by index."""
    n = feats.shape[0]
    out = torch.empty((n, k), dtype=torch.long)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        d = torch.cdist(feats[start:end].double(), feats.double())
        rows = torch.arange(end - start)
        d[rows, rows + start] = float("inf")  # exclude self, even when duplicated
        _, idx = torch.sort(d, dim=1, stable=True)
        out[start:end] = idx[:, :k]
    return out


def _knn_faiss(feats: torch.Tensor, k: int) -> torch.Tensor:
    import faiss  # type: ignore

    x = np.ascontiguousarray(feats.numpy(), dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, idx = index.search(x, k + 1)
    n = x.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        row = idx[i][idx[i] != i]
        out[i] = row[:k]
    return torch.from_numpy(out)


def knn_label_candidates(features, labels, k: int = 10, *, backend: str = "auto") -> np.ndarray:
    """(N, k+1) int64 candidate labels: column 0 the sample's own (noisy) label, columns 1..k the
    labels of its k nearest other training samples by Euclidean distance in feature space,
    nearest first. ``backend``: "auto" (faiss when installed, else exact), "faiss", "exact"."""
    feats = _as_float_tensor(features, "features")
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != feats.shape[0]:
        raise InputError(f"labels: expected shape ({feats.shape[0]},), got {lab.shape}")
    n = feats.shape[0]
    if not 1 <= k < n:
        raise InputError(f"k: must be in [1, N-1] = [1, {n - 1}], got {k}")
    if backend not in ("auto", "faiss", "exact"):
        raise InputError(f"backend: unknown {backend!r} (auto, faiss, exact)")
    nbr = None
    if backend in ("auto", "faiss"):
        try:
            nbr = _knn_faiss(feats, k)
        except ImportError as exc:
            if backend == "faiss":
                require("faiss", "the faiss kNN backend", error=exc)
    if nbr is None:
        nbr = _knn_exact(feats, k)
    lab_t = torch.as_tensor(lab.astype(np.int64))
    return torch.cat([lab_t[:, None], lab_t[nbr]], dim=1).numpy()


def sample_candidate_labels(candidates: torch.Tensor, generator: torch.Generator
                            ) -> "tuple[torch.Tensor, torch.Tensor]":
    """Draw one of the (k+1) candidates per row uniformly -> (labels (B,), weights (B,)): weight =
    number of candidates equal to the drawn label, normalised to sum 1 over the batch."""
    b, kk = candidates.shape
    pick = torch.randint(0, kk, (b,), generator=generator)
    drawn = candidates[torch.arange(b), pick]
    freq = (candidates == drawn[:, None]).sum(dim=1).to(torch.float32)
    return drawn, freq / freq.sum()


def weighted_noise_loss(eps: torch.Tensor, eps_pred: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_c sum_i w_i (eps_ic - eps_pred_ic)^2`` (the reference's weighted MSE)."""
    return (weights @ (eps - eps_pred).pow(2)).mean()


# --------------------------------------------------------------------------- model

class _TimeScaledLinear(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_steps: int):
        super().__init__()
        self.lin = nn.Linear(n_in, n_out)
        self.embed = nn.Embedding(n_steps, n_out)
        nn.init.uniform_(self.embed.weight, 0.0, 1.0)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.embed(t) * self.lin(x)


class LRADiffusion(nn.Module):
    """Noise predictor eps_theta(y_t, t, f_p) plus the diffusion buffers (schedule, DDIM grid)."""

    def __init__(self, num_classes: int, feature_dim: int, *, hidden: int = 512,
                 timesteps: int = 1000, ddim_steps: int = 10):
        super().__init__()
        self.num_classes, self.feature_dim = int(num_classes), int(feature_dim)
        self.hidden, self.timesteps, self.ddim_steps = int(hidden), int(timesteps), int(ddim_steps)
        n_steps = timesteps + 1
        self.encoder = nn.Linear(feature_dim, hidden)  # stands in for the reference's image ResNet
        self.norm = nn.BatchNorm1d(hidden)
        self.lin1 = _TimeScaledLinear(num_classes + feature_dim, hidden, n_steps)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.lin2 = _TimeScaledLinear(hidden, hidden, n_steps)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.lin3 = _TimeScaledLinear(hidden, hidden, n_steps)
        self.bn3 = nn.BatchNorm1d(hidden)
        self.out = nn.Linear(hidden, num_classes)

        betas = cosine_beta_schedule(timesteps)
        abar = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer("betas", betas)
        self.register_buffer("alphas_cumprod", abar)
        grid = ddim_timesteps(timesteps, ddim_steps)
        self.register_buffer("ddim_t", torch.from_numpy(grid))
        self.register_buffer("ddim_abar", abar[grid])
        prev = torch.cat([abar[:1], abar[grid[:-1]]])
        self.register_buffer("ddim_abar_prev", prev)

    def forward(self, y_t: torch.Tensor, t: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.encoder(fp))
        h = F.softplus(self.bn1(self.lin1(torch.cat([y_t, fp], dim=-1), t)))
        h = x * h
        h = F.softplus(self.bn2(self.lin2(h, t)))
        h = F.softplus(self.bn3(self.lin3(h, t)))
        return self.out(h)

    def q_sample(self, y0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t][:, None]
        return a.sqrt() * y0 + (1.0 - a).sqrt() * noise

    @torch.no_grad()
    def ddim_sample(self, fp: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from y_T = 0 -> (B, C) label vectors."""
        b = fp.shape[0]
        y = torch.zeros(b, self.num_classes, device=fp.device)
        for index in reversed(range(len(self.ddim_t))):
            t = torch.full((b,), int(self.ddim_t[index]), dtype=torch.long, device=fp.device)
            eps = self(y, t, fp)
            a_t, a_prev = self.ddim_abar[index], self.ddim_abar_prev[index]
            y0 = (y - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
            y = a_prev.sqrt() * y0 + (1.0 - a_prev).sqrt() * eps
        return y


# --------------------------------------------------------------------------- training

def _lr_at(cfg: LRAConfig, epoch_float: float) -> float:
    if epoch_float < cfg.warmup_epochs:
        return cfg.lr * epoch_float / cfg.warmup_epochs
    total = cfg.cosine_epochs if cfg.cosine_epochs is not None else cfg.epochs
    span = max(total - cfg.warmup_epochs, 1e-12)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch_float - cfg.warmup_epochs) / span))


def train_lra(features, labels, *, num_classes: int, config: Optional[LRAConfig] = None,
              val_features=None, val_labels=None) -> LRAResult:
    """Train LRA-diffusion on frozen features (N, D) float and noisy labels (N,) int.

    With ``val_features``/``val_labels`` the model is evaluated (DDIM accuracy) every
    ``eval_every`` epochs from ``warmup_epochs`` on and the best one is returned; ties keep the
    earlier epoch. Deterministic for a given ``config.seed`` on one device.
    """
    cfg = config or LRAConfig()
    cfg.validate()
    if num_classes < 2:
        raise InputError(f"num_classes: must be >= 2, got {num_classes}")
    feats = _as_float_tensor(features, "features")
    n, d = feats.shape
    lab = as_labels(labels, num_classes, n=n, what="labels")
    if n < 2:
        raise InputError("features: need at least 2 samples")
    has_val = val_features is not None or val_labels is not None
    if has_val:
        if val_features is None or val_labels is None:
            raise InputError("val_features/val_labels: give both or neither")
        vfeats = _as_float_tensor(val_features, "val_features")
        if vfeats.shape[1] != d:
            raise InputError(f"val_features: feature dimension {vfeats.shape[1]} != {d}")
        vlab = as_labels(val_labels, num_classes, n=vfeats.shape[0], what="val_labels")

    start = time.time()
    k = min(cfg.k, n - 1)
    cand = torch.from_numpy(knn_label_candidates(feats, lab, k))

    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = LRADiffusion(num_classes, d, hidden=cfg.hidden, timesteps=cfg.timesteps,
                         ddim_steps=cfg.ddim_steps).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=0.0)
    feats_dev = feats.to(device)
    # drop a trailing batch of one: BatchNorm cannot train on it.
    n_batches = n // cfg.batch_size + (1 if n % cfg.batch_size > 1 else 0)
    n_batches = max(n_batches, 1)

    history: List[Dict[str, float]] = []
    best_state, best_epoch, best_acc = None, cfg.epochs - 1, None
    start_epoch = 0
    ckpt = LoopCheckpoint("lra", cfg.to_dict(), feats.numpy(), lab, num_classes,
                          None if not has_val else vfeats.numpy(), None if not has_val else vlab) \
        if checkpointing() else None
    saved = ckpt.load() if ckpt is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["gen"])
        torch.set_rng_state(saved["torch_rng"])
        history = json.loads(saved["history"])
        best_epoch = int(saved["best_epoch"])
        best_acc = None if saved["best_acc"] is None else float(saved["best_acc"])
        best_state = {k: v.to(device) for k, v in saved["best_state"].items()} or None
        start_epoch = int(saved["epoch"]) + 1
    bar = progress(desc="lra-diffusion", total=cfg.epochs, unit="epoch", initial=start_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total, lr = 0.0, cfg.lr
        for b in range(n_batches):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            m = idx.numel()
            y_lab, w = sample_candidate_labels(cand[idx], gen)
            y0 = F.one_hot(y_lab, num_classes).float().to(device)
            t = torch.randint(0, cfg.timesteps, (m // 2 + 1,), generator=gen)
            t = torch.cat([t, cfg.timesteps - 1 - t])[:m].to(device)
            eps = torch.randn(m, num_classes, generator=gen).to(device)
            lr = _lr_at(cfg, epoch + b / n_batches)
            for g in opt.param_groups:
                g["lr"] = lr
            pred = model(model.q_sample(y0, t, eps), t, feats_dev[idx.to(device)])
            loss = weighted_noise_loss(eps, pred, w.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.item())
        rec: Dict[str, float] = {"epoch": epoch, "loss": total / n_batches, "lr": lr}
        if has_val and epoch >= cfg.warmup_epochs and (epoch - cfg.warmup_epochs) % cfg.eval_every == 0 \
                or has_val and epoch == cfg.epochs - 1 and best_state is None:
            pred_v = _predict(model, vfeats, cfg)
            acc = float((pred_v == vlab).mean())
            rec["val_acc"] = acc
            if best_acc is None or acc > best_acc:
                best_acc, best_epoch = acc, epoch
                best_state = copy.deepcopy(model.state_dict())
        history.append(rec)
        if ckpt is not None:
            ckpt.save({"epoch": epoch, "model": tensor_state(model.state_dict()), "optimizer": opt.state_dict(),
                       "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": json.dumps(history),
                       "best_epoch": best_epoch, "best_acc": best_acc,
                       "best_state": tensor_state(best_state) if best_state is not None else {}})
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", **({"val": f"{rec['val_acc']:.3f}"}
                                                      if "val_acc" in rec else {}))
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return LRAResult(model=model, best_epoch=best_epoch, best_val_acc=best_acc, history=history,
                     seconds=time.time() - start)


def _predict(model: LRADiffusion, feats: torch.Tensor, cfg: LRAConfig, chunk: int = 4096) -> np.ndarray:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, feats.shape[0], chunk):
            y = model.ddim_sample(feats[s:s + chunk].to(device))
            out.append(torch.argmin((y - 1.0).abs(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def predict_lra(model: LRADiffusion, features, *, config: Optional[LRAConfig] = None) -> np.ndarray:
    """(N,) int64 predicted labels: DDIM (``model.ddim_steps`` steps, eta = 0) from y_T = 0; the
    class whose component of y_0 is closest to 1. ``config`` is accepted for symmetry (the grid is
    fixed by the model)."""
    feats = _as_float_tensor(features, "features")
    if feats.shape[1] != model.feature_dim:
        raise InputError(f"features: dimension {feats.shape[1]} != model's {model.feature_dim}")
    return _predict(model, feats, config or LRAConfig()).astype(np.int64)

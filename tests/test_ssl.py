"""SimCLR encoder (synref.ssl): loss, determinism, shapes, augmentation, invariance."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synref.errors import InputError
from synref.models import extract_features as extract_ssl_features
from synref.refiners import prototype_accuracy
from synref.train.simclr import SSLConfig, knn_cv_accuracy, nt_xent_loss, ssl_augment, train_simclr


def _blobs(n: int = 64, size: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Small structured images: a bright bar / square at a random spot on a dark background."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, channels), np.uint8)
    for i in range(n):
        kind = i % 4
        r, c = rng.integers(1, size - 4, 2)
        if kind == 0:
            out[i, r:r + 3, :, :] = 220
        elif kind == 1:
            out[i, :, c:c + 3, :] = 220
        elif kind == 2:
            out[i, r:r + 3, c:c + 3, :] = 255
        else:
            idx = np.arange(size)
            out[i, idx, idx, :] = 200
        out[i] = np.clip(out[i].astype(int) + rng.integers(0, 30, out[i].shape), 0, 255)
    return out


FAST = dict(batch_size=32, hidden_dim=32, projection_dim=16, warmup_epochs=1)


def test_config_roundtrip_and_validation():
    cfg = SSLConfig(epochs=3, crop_scale=(0.5, 0.9), temperature=0.3)
    assert SSLConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError):
        SSLConfig(temperature=0)
    with pytest.raises(InputError):
        SSLConfig(crop_scale=(0.8, 0.5))
    with pytest.raises(InputError):
        SSLConfig.from_dict({"epochs": 1, "bogus": 2})


@pytest.mark.parametrize("shape", [(16, 1, 8, 8), (8, 3, 32, 32)])
def test_augment_keeps_shape_and_changes_images(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(_blobs(shape[0], shape[2], shape[1])).permute(0, 3, 1, 2)
    cfg = SSLConfig(hflip=True)
    y = ssl_augment(x, cfg, g)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    xf = x.float() / 255
    diff = (y - xf).abs().flatten(1).mean(1)
    assert bool((diff > 1e-3).all())                     # every image changed
    y2 = ssl_augment(x, cfg, g)
    assert not torch.allclose(y, y2)                      # two views differ
    y3 = ssl_augment(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(y, y3)                             # seeded draws are reproducible


def test_augment_identity_settings_is_near_identity():
    cfg = SSLConfig(crop_scale=(1.0, 1.0), aspect=0, translate=0, rotate=0, brightness=0,
                    contrast=0, blur_prob=0, noise_std=0)
    x = torch.from_numpy(_blobs(8)).permute(0, 3, 1, 2)
    y = ssl_augment(x, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(y, x.float() / 255, atol=1e-5)


def test_nt_xent_prefers_matching_views():
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    good = nt_xent_loss(z, z + 0.01, 0.2)
    bad = nt_xent_loss(z, z[torch.randperm(16, generator=torch.Generator().manual_seed(1))], 0.2)
    assert float(good) < float(bad)
    assert float(good) < np.log(31)


def test_loss_decreases_and_deterministic():
    imgs = _blobs(48)
    cfg = SSLConfig(epochs=10, lr=3e-3, seed=3, **FAST)
    m1 = train_simclr(imgs, config=cfg)
    hist = [h["loss"] for h in m1.ssl_history]
    assert len(hist) == 10
    assert np.mean(hist[-3:]) < hist[0] - 0.2
    m2 = train_simclr(imgs, config=cfg)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    m3 = train_simclr(imgs, config=SSLConfig(epochs=1, seed=4, **FAST))
    assert not torch.equal(m3.state_dict()["blocks.0.0.weight"], s1["blocks.0.0.weight"])


@pytest.mark.parametrize("hw,c", [(8, 1), (32, 3)])
def test_output_shapes(hw, c):
    imgs = _blobs(12, hw, c)
    extra = _blobs(6, hw, c, seed=1)
    m = train_simclr(imgs, config=SSLConfig(epochs=1, **FAST), extra_images=extra)
    f = extract_ssl_features(m, imgs)
    assert f.shape == (12, m.feature_dim) and f.dtype == np.float32
    assert np.isfinite(f).all()
    assert not m.training
    with pytest.raises(InputError):
        train_simclr(imgs, config=SSLConfig(epochs=1, **FAST), extra_images=_blobs(4, hw + 1, c))


def test_training_makes_views_more_similar():
    imgs = _blobs(64)
    cfg = SSLConfig(epochs=15, lr=3e-3, seed=0, **FAST)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)

    def view_agreement(model):
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            a = model.features(ssl_augment(x, cfg, g))
            b = model.features(ssl_augment(x, cfg, g))
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        pos = (a * b).sum(1).mean()
        # positive-vs-negative margin (raw cosine can be high for any pair at init)
        neg = (a @ b.t()).fill_diagonal_(0).sum() / (len(a) * (len(a) - 1))
        return float(pos - neg)

    from synref.models import create_model
    from synref.models import channel_stats
    init = create_model("small_cnn", num_classes=1, in_channels=1, seed=0)
    init.set_normalization(*channel_stats(imgs))
    init.eval()
    before = view_agreement(init)
    trained = train_simclr(imgs, config=cfg)
    after = view_agreement(trained)
    assert after > before + 0.05


def test_eval_helpers():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5))
    labels = np.repeat(np.arange(3), 20)
    feats = centers[labels] + 0.05 * rng.normal(size=(60, 5))
    assert knn_cv_accuracy(feats, labels, k=3, folds=5) > 0.95
    assert prototype_accuracy(feats, labels, centers, np.arange(3), 3) == 1.0

"""Training loop: config, schedule, augmentation, fit / fine-tune / predict / cross-fit."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from synref.errors import InputError
from synref.models import (channel_stats, create_model, evaluate_accuracy, extract_features, predict_logits,
                           predict_proba)
from synref.train import (
    TrainConfig,
    augment_batch,
    cross_fit,
    fine_tune,
    fit,
    lr_at,
)


def squares(n: int, *, size: int = 8, channels: int = 1, classes: int = 4, seed: int = 0):
    """Class k = a bright square in quadrant k on a dim noisy background (separable)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, size, size, channels)).astype(np.uint8)
    q = size // 2
    for i, k in enumerate(y):
        r, c = divmod(int(k) % 4, 2)
        x[i, r * q:(r + 1) * q, c * q:(c + 1) * q, :] = 230
    return x, y.astype(np.int64)


def quick(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=32, lr=0.05, milestones=[], warmup_epochs=0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------- config
def test_config_presets_and_json_round_trip():
    std = TrainConfig.paper_standard()
    assert (std.lr, std.momentum, std.weight_decay, std.batch_size, std.epochs) == \
        (0.1, 0.9, 5e-4, 128, 200)
    assert std.milestones == [60, 120, 160] and std.gamma == 0.2 and std.warmup_epochs == 1
    assert std.hflip and std.pad_for(32) == 4 and std.pad_for(8) == 1
    ft = TrainConfig.paper_finetune(seed=3)
    assert (ft.lr, ft.momentum, ft.weight_decay, ft.epochs, ft.batch_size) == \
        (1e-3, 0.9, 1e-4, 50, 128)
    assert ft.milestones == [20, 40] and ft.gamma == 0.1 and ft.seed == 3
    for cfg in (std, ft, quick(augment_pad=0, nesterov=True, device="cpu")):
        back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg


def test_config_rejects_bad_options():
    with pytest.raises(InputError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(InputError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(InputError, match="unknown option"):
        TrainConfig.from_dict({"epochs": 3, "learning_rate": 0.1})


def test_lr_schedule_milestones_gamma_and_warmup():
    cfg = TrainConfig.paper_standard()
    assert lr_at(cfg, 1) == pytest.approx(0.1)
    assert lr_at(cfg, 59) == pytest.approx(0.1)
    assert lr_at(cfg, 60) == pytest.approx(0.02)
    assert lr_at(cfg, 119) == pytest.approx(0.02)
    assert lr_at(cfg, 120) == pytest.approx(0.004)
    assert lr_at(cfg, 160) == pytest.approx(0.0008)
    assert lr_at(cfg, 199) == pytest.approx(0.0008)
    # linear warm-up over the first epoch, per step
    assert lr_at(cfg, 0, 0, 10) == pytest.approx(0.01)
    assert lr_at(cfg, 0, 4, 10) == pytest.approx(0.05)
    assert lr_at(cfg, 0, 9, 10) == pytest.approx(0.1)
    ft = TrainConfig.paper_finetune()
    assert [lr_at(ft, e) for e in (0, 19, 20, 39, 40, 49)] == \
        pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    # the lr recorded in the history follows the schedule
    x, y = squares(40)
    res = fit(create_model("small_cnn", num_classes=4, in_channels=1, seed=0), x, y,
              config=quick(epochs=3, lr=0.02, milestones=[1, 2], gamma=0.5))
    assert [h["lr"] for h in res.history] == pytest.approx([0.02, 0.01, 0.005])


# ---------------------------------------------------------------------------- augmentation
def test_augmentation_shapes_identity_and_crops():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    assert torch.equal(augment_batch(x, pad=0, hflip=False, generator=g), x)
    out = augment_batch(x, pad=2, hflip=False, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):   # every output is some 8x8 window of the zero-padded input
        assert any(torch.equal(out[i], padded[i, :, r:r + 8, c:c + 8])
                   for r in range(5) for c in range(5))
    flipped = augment_batch(x.float(), pad=0, hflip=True, generator=torch.Generator().manual_seed(2))
    kinds = [torch.equal(flipped[i], x[i].float()) for i in range(len(x))]
    assert all(k or torch.equal(flipped[i], x[i].float().flip(2)) for i, k in enumerate(kinds))
    again = augment_batch(x.float(), pad=0, hflip=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(flipped, again)
    big = torch.rand(64, 1, 4, 4)
    assert not torch.equal(augment_batch(big, pad=1, hflip=True,
                                         generator=torch.Generator().manual_seed(3)), big)


def test_channel_stats():
    x = np.zeros((4, 2, 2, 3), np.uint8)
    x[..., 0] = 255
    x[:2, ..., 1] = 255
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(std, [1.0, 0.5, 1.0])   # constant channels get std 1


# ------------------------------------------------------------------------------------ fit
def test_fit_learns_a_separable_problem_and_sets_normalisation():
    x, y = squares(200)
    model = create_model("small_cnn", num_classes=4, in_channels=1, seed=0)
    res = fit(model, x, y, config=quick(epochs=4))
    assert res.model is model and res.best_val_acc is None and res.best_epoch == 3
    assert len(res.history) == 4
    assert set(res.history[0]) == {"epoch", "lr", "train_loss", "train_acc", "val_acc"}
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert evaluate_accuracy(model, x, y) >= 0.95
    mean, std = channel_stats(x)
    np.testing.assert_allclose(model.mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(model.std.numpy(), std, rtol=1e-6)


def test_fit_is_deterministic_per_seed():
    x, y = squares(64, size=8, channels=3)

    def run(seed):
        m = create_model("small_cnn", num_classes=4, in_channels=3, seed=seed)
        fit(m, x, y, config=quick(seed=seed, augment_pad=1, hflip=True))
        return m

    a, b, c = run(0), run(0), run(1)
    assert states_equal(a, b)
    assert not states_equal(a, c)
    # same init, different data-order / augmentation seed also differs
    d = create_model("small_cnn", num_classes=4, in_channels=3, seed=0)
    fit(d, x, y, config=quick(seed=5, augment_pad=1, hflip=True))
    assert not states_equal(a, d)


def test_best_validation_checkpoint_is_that_epochs_weights():
    x, y = squares(96, seed=1)
    rng = np.random.default_rng(2)                      # half the training labels random:
    y = np.where(rng.random(96) < 0.5, rng.integers(0, 4, 96), y)   # val accuracy swings
    vx, vy = squares(60, seed=2)
    cfg = quick(epochs=8, lr=0.1, batch_size=16)
    res = fit(create_model("small_cnn", num_classes=4, in_channels=1, seed=0), x, y,
              val_images=vx, val_labels=vy, config=cfg)
    accs = [h["val_acc"] for h in res.history]
    assert len(set(accs)) > 2                            # a non-trivial choice of epoch
    assert res.best_val_acc == max(accs)
    assert res.best_epoch == accs.index(max(accs))       # earliest best
    assert evaluate_accuracy(res.model, vx, vy) == pytest.approx(res.best_val_acc)
    # deterministic re-run stopped at the best epoch reproduces the checkpoint bit for bit
    again = create_model("small_cnn", num_classes=4, in_channels=1, seed=0)
    fit(again, x, y, config=quick(epochs=res.best_epoch + 1, lr=0.1, batch_size=16))
    assert states_equal(res.model, again)
    if res.best_epoch < cfg.epochs - 1:                  # and it is not the last epoch's
        last = create_model("small_cnn", num_classes=4, in_channels=1, seed=0)
        fit(last, x, y, config=cfg)
        assert not states_equal(res.model, last)


def test_fit_rejects_bad_input():
    model = create_model("small_cnn", num_classes=4, in_channels=1)
    x, y = squares(10)
    with pytest.raises(InputError, match="uint8"):
        fit(model, x.astype(np.float32), y, config=quick())
    with pytest.raises(InputError, match="sample 0"):
        fit(model, x, np.full(10, 9), config=quick())
    with pytest.raises(InputError, match="together"):
        fit(model, x, y, val_images=x, config=quick())


def test_trailing_single_sample_batch_is_merged():
    x, y = squares(33)   # 32 + 1: a lone BatchNorm sample would fail in train mode
    res = fit(create_model("resnet18", num_classes=4, in_channels=1, seed=0), x, y,
              config=quick(epochs=1, batch_size=32))
    assert len(res.history) == 1


# ---------------------------------------------------------------------------- fine-tune
def test_fine_tune_reinitialises_head_and_keeps_backbone_and_normalisation():
    x, y = squares(96)
    base = create_model("small_cnn", num_classes=4, in_channels=1, seed=0)
    fit(base, x, y, config=quick(epochs=2))
    base.set_normalization([0.3], [0.7])           # not the data's statistics
    snapshot = {k: v.clone() for k, v in base.state_dict().items()}
    res = fine_tune(base, x, y, val_images=x[:32], val_labels=y[:32],
                    config=TrainConfig.paper_finetune(epochs=1, batch_size=32))
    tuned = res.model
    assert tuned is not base
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in snapshot.items())  # untouched
    torch.testing.assert_close(tuned.mean, torch.tensor([0.3]))
    torch.testing.assert_close(tuned.std, torch.tensor([0.7]))
    # head: re-initialised (far from the trained head)
    w_old, w_new = snapshot["classifier.weight"], tuned.classifier.weight.detach()
    assert (w_new - w_old).norm() > 0.5 * w_old.norm()
    # backbone: close to the original at lr 1e-3
    for k, v in tuned.state_dict().items():
        if k.startswith("blocks.") and k.endswith("weight") and v.dim() == 4:
            rel = ((v - snapshot[k]).norm() / snapshot[k].norm()).item()
            assert rel < 0.05, (k, rel)
    # the head re-init is seeded by config.seed
    res2 = fine_tune(base, x, y, val_images=x[:32], val_labels=y[:32],
                     config=TrainConfig.paper_finetune(epochs=1, batch_size=32))
    assert states_equal(res.model, res2.model)


# ------------------------------------------------------------------------------- predict
def test_predict_helpers_shapes_and_consistency():
    x, y = squares(50, size=16, channels=3)
    model = create_model("small_cnn", num_classes=4, in_channels=3, seed=0)
    fit(model, x, y, config=quick(epochs=1))
    model.train()
    logits = predict_logits(model, x, batch_size=7)
    probs = predict_proba(model, x)
    feats = extract_features(model, x, batch_size=13)
    assert model.training                                  # mode restored
    assert logits.shape == (50, 4) and probs.shape == (50, 4) and feats.shape == (50, 128)
    assert logits.dtype == probs.dtype == feats.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(),
                               rtol=1e-4, atol=1e-6)
    head = model.classifier.weight.detach().numpy()
    np.testing.assert_allclose(feats @ head.T + model.classifier.bias.detach().numpy(), logits,
                               rtol=1e-4, atol=1e-4)
    acc = evaluate_accuracy(model, x, y)
    assert acc == pytest.approx(float(np.mean(logits.argmax(1) == y)))
    assert predict_proba(model, x[:0]).shape == (0, 4)
    # (N, H, W) grayscale is read as one channel
    gray = create_model("small_cnn", num_classes=2, in_channels=1, seed=0)
    assert predict_proba(gray, x[..., 0]).shape == (50, 2)


# ------------------------------------------------------------------------------- cross-fit
def test_cross_fit_is_out_of_sample():
    rng = np.random.default_rng(0)
    n, k = 120, 4
    x = rng.integers(0, 256, (n, 8, 8, 1)).astype(np.uint8)   # random images,
    y = rng.integers(0, k, n)                                 # random labels
    cfg = quick(epochs=40, batch_size=30, lr=0.05, augment_pad=0, hflip=False)
    # in-sample: the network memorises the noise
    full = create_model("small_cnn", num_classes=k, in_channels=1, seed=0)
    fit(full, x, y, config=cfg)
    assert evaluate_accuracy(full, x, y) >= 0.9
    # out-of-sample: near chance
    res = cross_fit(x, y, model_name="small_cnn", num_classes=k, in_channels=1, config=cfg,
                    folds=4, seed=0)
    assert res.pred_probs.shape == (n, k) and res.features.shape == (n, 128)
    assert res.fold_of.shape == (n,) and set(res.fold_of.tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(res.pred_probs.sum(1), 1.0, rtol=1e-5)
    oos = float(np.mean(res.pred_probs.argmax(1) == y))
    assert oos < 0.5, oos
    # stratified: each fold's class counts differ by at most one from an even split
    for f in range(4):
        counts = np.bincount(y[res.fold_of == f], minlength=k)
        assert np.all(np.abs(counts - np.bincount(y, minlength=k) / 4) <= 1)
    assert len(res.histories) == 4 and len(res.histories[0]) == cfg.epochs


def test_cross_fit_falls_back_to_kfold_and_is_deterministic():
    x, y = squares(40, classes=4)
    y[y == 1] = 0
    y[7] = 1                       # class 1 has a single sample: StratifiedKFold impossible
    cfg = quick(epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # sklearn would warn about the tiny class
        a = cross_fit(x, y, model_name="small_cnn", num_classes=4, config=cfg, folds=3,
                      seed=1)
    b = cross_fit(x, y, model_name="small_cnn", num_classes=4, config=cfg, folds=3,
                  seed=1)
    assert np.array_equal(a.fold_of, b.fold_of) and np.array_equal(a.pred_probs, b.pred_probs)
    assert np.bincount(a.fold_of).tolist() == [14, 13, 13]
    with pytest.raises(InputError, match="folds"):
        cross_fit(x, y, model_name="small_cnn", num_classes=4, config=cfg, folds=1)

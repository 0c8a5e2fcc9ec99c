"""PLC (progressive label correction): correction step, delta schedule, trainer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synref.errors import InputError
from synref.models import create_model
from synref.train import TrainConfig
from synref.train.plc import PLCConfig, lrt_correct, next_delta, train_plc


def squares(n: int, *, size: int = 8, classes: int = 3, seed: int = 0):
    """Class k = a bright square in quadrant k on a dim noisy background."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
    q = size // 2
    for i, k in enumerate(y):
        r, c = divmod(int(k) % 4, 2)
        x[i, r * q:(r + 1) * q, c * q:(c + 1) * q, :] = 230
    return x, y.astype(np.int64)


@pytest.fixture(scope="module")
def problem():
    x, y = squares(300)
    xv, yv = squares(60, seed=1)
    rng = np.random.default_rng(2)
    noisy = y.copy()
    c0 = np.flatnonzero(y == 0)
    noisy[rng.choice(c0, int(0.3 * len(c0)), replace=False)] = 1   # systematic 0 -> 1 flip
    return x, y, noisy, xv, yv


def small_cfg(**kw) -> PLCConfig:
    base = dict(train=TrainConfig(epochs=10, batch_size=32, lr=0.05, milestones=[],
                                  warmup_epochs=0, seed=0, augment_pad=0),
                warmup_epochs=3, window=2)
    base.update(kw)
    return PLCConfig(**base)


def run(problem, cfg=None, seed=0):
    x, y, noisy, xv, yv = problem
    model = create_model("small_cnn", num_classes=3, in_channels=1, seed=seed)
    return train_plc(model, x, noisy, val_images=xv, val_labels=yv,
                     config=cfg or small_cfg(), true_labels=y)


# ------------------------------------------------------------------------- correction rule
def test_lrt_correct_matches_hand_computation():
    f = np.array([[0.6, 0.3, 0.1],     # y=1: LR 0.5          -> keep at 0.3, flip at 0.6
                  [0.7, 0.2, 0.1],     # y=1: LR 2/7 ~ 0.286  -> flip to 0 at 0.3
                  [0.1, 0.1, 0.8],     # y=2: LR 1 (argmax)   -> never changes
                  [0.45, 0.1, 0.45],   # y=0: tie with 2, LR 1 -> never changes
                  [0.05, 0.9, 0.05]])  # y=2: LR 1/18         -> flip to 1
    labels = np.array([1, 1, 2, 0, 2])
    np.testing.assert_array_equal(lrt_correct(f, labels, 0.3), [1, 0, 2, 0, 1])
    np.testing.assert_array_equal(lrt_correct(f, labels, 0.6), [0, 0, 2, 0, 1])
    np.testing.assert_array_equal(lrt_correct(f, labels, 0.0), labels)
    np.testing.assert_array_equal(lrt_correct(f, labels, 1.0), [0, 0, 2, 0, 1])  # LR < 1 only
    # brute-force reference on random inputs
    rng = np.random.default_rng(0)
    f = rng.dirichlet(np.ones(4), 200)
    lab = rng.integers(0, 4, 200)
    exp = np.array([int(np.argmax(f[i])) if f[i, lab[i]] / f[i].max() < 0.45 else lab[i]
                    for i in range(200)])
    np.testing.assert_array_equal(lrt_correct(f, lab, 0.45), exp)
    assert lrt_correct(f, lab, 0.45).dtype == np.int64
    with pytest.raises(InputError):
        lrt_correct(f[:10], lab, 0.3)


def test_delta_schedule_increments_only_below_min_fraction_and_caps():
    n = 10_000                                          # 0.1 % = 10 labels
    assert next_delta(9, n, 0.3) == pytest.approx(0.4)
    assert next_delta(0, n, 0.3) == pytest.approx(0.4)
    assert next_delta(10, n, 0.3) == 0.3                # exactly 0.1 % is not "fewer"
    assert next_delta(500, n, 0.3) == 0.3
    assert next_delta(0, n, 0.85) == pytest.approx(0.9)
    assert next_delta(0, n, 0.9) == pytest.approx(0.9)  # capped
    assert next_delta(0, n, 0.3, step=0.2, maximum=0.45) == pytest.approx(0.45)
    assert next_delta(40, n, 0.3, min_change_fraction=0.005) == pytest.approx(0.4)
    d = 0.3
    for _ in range(20):
        d = next_delta(0, n, d)
    assert d == pytest.approx(0.9)


# ------------------------------------------------------------------------------- training
def test_plc_corrects_systematic_flip_and_logs(problem):
    x, y, noisy, xv, yv = problem
    res = run(problem)
    given_acc = float(np.mean(noisy == y))
    assert float(np.mean(res.corrected_labels == y)) > given_acc + 0.05
    h = res.history
    assert len(h) == 10 and [r["epoch"] for r in h] == list(range(10))
    # warm-up epochs (0..2) change no labels
    for r in h[:3]:
        assert not r["corrected"] and r["num_changed"] == 0 and r["num_differ"] == 0
        assert r["label_acc"] == pytest.approx(given_acc)
        assert r["delta"] == pytest.approx(0.3)
    assert all(r["corrected"] for r in h[3:])
    # the logged delta follows the schedule
    for prev, cur in zip(h[3:], h[4:]):
        assert cur["delta"] == pytest.approx(next_delta(prev["num_changed"], len(y),
                                                        prev["delta"]))
    assert h[-1]["label_acc"] == pytest.approx(float(np.mean(res.corrected_labels == y)))
    assert h[-1]["num_differ"] == int((res.corrected_labels != noisy).sum())
    assert res.best_val_acc == max(r["val_acc"] for r in h)
    assert h[res.best_epoch]["val_acc"] == res.best_val_acc
    assert res.corrected_labels.shape == (300,) and res.corrected_labels.dtype == np.int64
    assert not res.model.training


def test_no_correction_when_warmup_covers_all_epochs(problem):
    _, _, noisy, _, _ = problem
    res = run(problem, small_cfg(train=TrainConfig(epochs=3, batch_size=32, lr=0.05,
                                                   milestones=[], warmup_epochs=0),
                                 warmup_epochs=3))
    np.testing.assert_array_equal(res.corrected_labels, noisy)
    assert all(not r["corrected"] for r in res.history)


def test_plc_is_deterministic(problem):
    cfg = small_cfg(train=TrainConfig(epochs=5, batch_size=32, lr=0.05, milestones=[],
                                      warmup_epochs=0, seed=3, hflip=True), warmup_epochs=2)
    a, b = run(problem, cfg), run(problem, cfg)
    np.testing.assert_array_equal(a.corrected_labels, b.corrected_labels)
    assert [dict(r) for r in a.history] == [dict(r) for r in b.history]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_requires_validation(problem):
    x, _, noisy, _, _ = problem
    model = create_model("small_cnn", num_classes=3, in_channels=1, seed=0)
    with pytest.raises(InputError):
        train_plc(model, x, noisy, val_images=None, val_labels=None, config=small_cfg())


# --------------------------------------------------------------------------------- config
def test_config_round_trip_and_paper_preset():
    p = PLCConfig.paper()
    t = p.train
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, t.nesterov) == \
        (180, 128, 0.01, 0.9, 5e-4, True)
    assert (t.milestones, t.gamma, t.warmup_epochs, t.hflip) == ([40, 80], 0.5, 0, True)
    assert (p.warmup_epochs, p.window, p.delta_start, p.delta_step, p.delta_max,
            p.min_change_fraction) == (8, 5, 0.3, 0.1, 0.9, 0.001)
    d = json.loads(json.dumps(p.to_dict()))
    assert isinstance(d["train"], dict)
    assert PLCConfig.from_dict(d) == p
    q = PLCConfig.paper(window=3, train={"epochs": 7, "seed": 4})
    assert q.window == 3 and q.train.epochs == 7 and q.train.seed == 4 and q.train.lr == 0.01
    assert PLCConfig.from_dict(json.loads(json.dumps(q.to_dict()))) == q
    with pytest.raises(InputError):
        PLCConfig.from_dict({"bogus": 1})
    with pytest.raises(InputError):
        PLCConfig(window=0)
    with pytest.raises(InputError):
        PLCConfig(delta_start=1.5)

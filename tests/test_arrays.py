"""Copy-free helpers for memory-mapped features, and the pieces that use them: they must give
the same numbers as the plain (copying) computations."""
import numpy as np
import pytest
import torch

import synref.arrays as arrays
from synref.arrays import l2_normalize, row_chunks, row_norms
from synref.neighbors import exact_knn
from synref.refiners.posterior import fit_soft_head
from synref.train.linear import LinearHeadConfig, cross_fit_linear, fit_linear_head
from synref.train.loop import fold_splits


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_l2_normalize_returns_unit_rows_themselves_and_normalises_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    unit = _unit(rng, 50, 8)
    np.save(tmp_path / "f.npy", unit)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    assert np.shares_memory(l2_normalize(mapped), mapped)  # no copy of a memory-mapped unit matrix
    raw = rng.normal(size=(5, 8)).astype(np.float32) * 3
    raw[2] = 0
    out = l2_normalize(raw)
    assert not np.shares_memory(out, raw)
    np.testing.assert_allclose(np.linalg.norm(out[[0, 1, 3, 4]], axis=1), 1.0, rtol=1e-6)
    assert np.all(out[2] == 0)
    np.testing.assert_allclose(row_norms(raw), np.linalg.norm(raw, axis=1), rtol=1e-6)


def test_row_chunks_cover_every_row_once_within_the_element_budget():
    chunks = list(row_chunks(103, 10, elements=40))
    assert all(c.stop - c.start == 4 for c in chunks[:-1])
    assert np.array_equal(np.concatenate([np.arange(c.start, c.stop) for c in chunks]), np.arange(103))


@pytest.mark.parametrize("block", [7, 64, 2048])
def test_exact_knn_is_the_same_in_small_blocks(block):
    rng = np.random.default_rng(1)
    x = _unit(rng, 300, 16)
    sim = x @ x.T
    np.fill_diagonal(sim, -2)
    brute = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    got = exact_knn(x, 5, block=block)  # 7 rows a block: 43 x 43 blocks
    assert np.array_equal(got, brute)  # most similar first
    some = np.array([299, 3, 150])
    assert np.array_equal(exact_knn(x, 5, queries=some, block=block), brute[some])


def test_cross_fit_linear_fits_each_fold_as_if_alone():
    rng = np.random.default_rng(2)
    x = _unit(rng, 200, 12)
    labels = rng.integers(0, 4, 200)
    cfg = LinearHeadConfig(steps=30)
    together = cross_fit_linear(x, labels, num_classes=4, folds=4, seed=3, config=cfg)
    alone = np.zeros_like(together)
    for train_idx, held_idx in fold_splits(labels, 4, 3):
        head = fit_linear_head(x[train_idx], labels[train_idx], 4, cfg)
        with torch.no_grad():
            alone[held_idx] = torch.softmax(head(torch.as_tensor(x[held_idx])), dim=1).numpy()
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_soft_head_ignores_rows_with_zero_targets():
    rng = np.random.default_rng(3)
    x = _unit(rng, 120, 6)
    targets = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 120)]
    keep = rng.random(120) < 0.7
    w_mask, b_mask = fit_soft_head(x, targets * keep[:, None], penalty=1.0, steps=30)
    w_sub, b_sub = fit_soft_head(x[keep], targets[keep], penalty=1.0, steps=30)
    np.testing.assert_allclose(w_mask, w_sub, atol=1e-4)
    np.testing.assert_allclose(b_mask, b_sub, atol=1e-4)
    extra = fit_soft_head(x[:60], targets[:60], penalty=1.0, steps=30, extra=(x[60:], targets[60:]))
    whole = fit_soft_head(x, targets, penalty=1.0, steps=30)
    np.testing.assert_allclose(extra[0], whole[0], atol=1e-4)

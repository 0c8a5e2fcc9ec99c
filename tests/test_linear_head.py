"""The linear softmax head on frozen features and its cross-fitted pred_probs."""
import numpy as np
import pytest

from synref.errors import InputError
from synref.train.linear import LinearHeadConfig, cross_fit_linear, fit_linear_head


def test_fits_separable_classes_deterministically():
    rng = np.random.default_rng(0)
    centers = 3 * rng.standard_normal((5, 16))
    labels = np.repeat(np.arange(5), 40)
    x = (centers[labels] + 0.3 * rng.standard_normal((200, 16))).astype(np.float32)
    a = fit_linear_head(x, labels, 5)
    b = fit_linear_head(x, labels, 5)
    assert np.array_equal(a.weight.detach().numpy(), b.weight.detach().numpy())
    import torch

    with torch.no_grad():
        pred = a(torch.nn.functional.normalize(torch.from_numpy(x), dim=1)).argmax(1).numpy()
    assert np.mean(pred == labels) == 1.0


def test_cross_fitted_probs_are_out_of_sample():
    """Random labels on random features: a head memorises its own training rows, but the
    cross-fitted softmax of a row never saw that row's label, so it is at chance."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 512)).astype(np.float32)
    labels = rng.integers(0, 4, 200)
    config = LinearHeadConfig(steps=200, lr=0.05, weight_decay=0.0)
    head = fit_linear_head(x, labels, 4, config)
    import torch

    with torch.no_grad():
        in_sample = head(torch.nn.functional.normalize(torch.from_numpy(x), dim=1)).argmax(1).numpy()
    assert np.mean(in_sample == labels) > 0.95
    oof = cross_fit_linear(x, labels, num_classes=4, folds=4, seed=0, config=config)
    assert oof.shape == (200, 4) and oof.dtype == np.float32
    np.testing.assert_allclose(oof.sum(1), 1.0, rtol=1e-5)
    assert np.mean(oof.argmax(1) == labels) < 0.4


def test_bad_input_is_named():
    with pytest.raises(InputError, match="folds"):
        cross_fit_linear(np.zeros((6, 3), np.float32), np.zeros(6, int), num_classes=2, folds=4)
    with pytest.raises(InputError, match="labels"):
        fit_linear_head(np.zeros((6, 3), np.float32), np.zeros(5, int), 2)
    with pytest.raises(InputError, match="steps"):
        LinearHeadConfig(steps=0)

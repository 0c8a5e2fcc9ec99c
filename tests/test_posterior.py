"""The posterior refiner (synref.posterior): estimated T, posterior, decision, do-no-harm."""
import numpy as np
import pytest

from synref.errors import InputError
from synref.posterior import (PosteriorOptions, choose_changes, label_posterior, posterior_refinement,
                              transition_matrix)


def refine(labels, c, anchor_labels, *, features, anchor_features, pred_probs=None, **options):
    return posterior_refinement(labels, features, anchor_features, anchor_labels, num_classes=c,
                                pred_probs=pred_probs, options=PosteriorOptions(**options))


def _problem(n=1200, c=4, d=16, spread=0.35, seed=0, anchors_per_class=30):
    """Gaussian classes around orthogonal-ish means; anchors drawn from the same classes."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(c, d)) * 1.0
    y = rng.integers(0, c, n)
    x = means[y] + spread * rng.normal(size=(n, d)) * np.sqrt(d) / 4
    ya = np.repeat(np.arange(c), anchors_per_class)
    a = means[ya] + spread * rng.normal(size=(len(ya), d)) * np.sqrt(d) / 4
    return x.astype(np.float32), y, a.astype(np.float32), ya


def _flip(y, c, rate, seed, pairs=True):
    """Each label moves to the next class (structured, pair-like noise) with probability rate."""
    rng = np.random.default_rng(seed)
    flip = rng.random(len(y)) < rate
    out = y.copy()
    out[flip] = (y[flip] + 1) % c if pairs else rng.integers(0, c, flip.sum())
    return out


def test_options_round_trip_and_checks():
    opts = PosteriorOptions(neighbors=5, rounds=1, target_precision=0.9)
    assert PosteriorOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(InputError, match="target precision"):
        PosteriorOptions(target_precision=1.5)
    with pytest.raises(InputError, match="folds"):
        PosteriorOptions(folds=1)


def test_transition_matrix_by_moments_recovers_known_noise():
    rng = np.random.default_rng(0)
    c, n = 3, 30000
    true_t = np.array([[0.7, 0.3, 0.0], [0.0, 0.9, 0.1], [0.2, 0.0, 0.8]])
    y = rng.integers(0, c, n)
    given = np.array([rng.choice(c, p=true_t[k]) for k in y])
    est = transition_matrix(np.eye(c)[y], given, c, pseudo_count=0.0)
    np.testing.assert_allclose(transition_matrix(np.eye(c)[y], given, c, confusion=np.eye(c), pseudo_count=0.0), est, atol=1e-9)
    np.testing.assert_allclose(est, true_t, atol=0.02)


def test_label_posterior_is_bayes_rule():
    prior = np.array([[0.5, 0.5], [0.9, 0.1]])
    t = np.array([[0.8, 0.2], [0.4, 0.6]])
    post = label_posterior(prior, np.array([0, 1]), t)
    expect0 = np.array([0.5 * 0.8, 0.5 * 0.4]) / (0.5 * 0.8 + 0.5 * 0.4)
    expect1 = np.array([0.9 * 0.2, 0.1 * 0.6]) / (0.9 * 0.2 + 0.1 * 0.6)
    np.testing.assert_allclose(post, np.stack([expect0, expect1]), rtol=1e-5)


def test_choose_changes_keeps_the_estimated_precision():
    post = np.array([[0.1, 0.9], [0.3, 0.7], [0.45, 0.55], [0.8, 0.2]], np.float32)
    labels = np.array([0, 0, 0, 0])
    every, _ = choose_changes(post, labels, None)
    assert every.tolist() == [True, True, True, False]
    mask, threshold = choose_changes(post, labels, 0.8)  # 0.9, then (0.9 + 0.7) / 2 = 0.8, then 0.717
    assert mask.tolist() == [True, True, False, False] and threshold == pytest.approx(0.7)
    none, threshold = choose_changes(post, labels, 0.95)
    assert not none.any() and threshold == 1.0


def test_fixes_structured_noise_far_beyond_the_given_labels():
    x, y, a, ya = _problem()
    given = _flip(y, 4, 0.45, seed=1)
    result = refine(given, 4, ya, features=x, anchor_features=a, neighbors=5)
    before, after = np.mean(given == y), np.mean(result.refined_labels == y)
    assert before < 0.6 and after > 0.9
    changed = result.changed
    assert np.mean(result.refined_labels[changed] == y[changed]) > 0.85
    assert result.scores.shape == (len(y), 4) and np.allclose(result.scores.sum(1), 1, atol=1e-5)
    assert 0.4 < result.info["transition_diagonal"] < 0.75  # the noise is seen: T's diagonal ~0.55


def test_do_no_harm_with_mostly_clean_labels():
    x, y, a, ya = _problem(spread=1.4, seed=3)  # overlapping classes: the anchor prior is ~85 % right
    given = _flip(y, 4, 0.05, seed=2)
    result = refine(given, 4, ya, features=x, anchor_features=a)
    assert np.mean(result.refined_labels == y) >= np.mean(given == y)
    assert result.num_changed() < 0.1 * len(y)
    assert result.info["transition_diagonal"] > 0.9  # the labels are seen to be mostly right


def test_deconvolution_sees_clean_labels_through_a_weak_prior():
    x, y, a, ya = _problem(spread=2.0, seed=3)
    given = _flip(y, 4, 0.03, seed=2)
    kw = dict(rounds=0, neighbors=0, features=x, anchor_features=a)
    plain = refine(given, 4, ya, deconvolve=False, **kw)
    corrected = refine(given, 4, ya, **kw)
    assert plain.info["transition_diagonal"] < 0.8 < corrected.info["transition_diagonal"]  # truth 0.97
    assert corrected.num_changed() < plain.num_changed()


def test_target_precision_trades_changes_for_precision():
    x, y, a, ya = _problem(spread=1.6, seed=4)
    given = _flip(y, 4, 0.4, seed=5)
    ev = dict(features=x, anchor_features=a)
    counts, precisions = [], []
    for target in (None, 0.97, 0.99):
        res = refine(given, 4, ya, neighbors=5, target_precision=target, **ev)
        counts.append(res.num_changed())
        changed = res.changed
        precisions.append(np.mean(res.refined_labels[changed] == y[changed]))
        if target is not None:
            assert res.info["estimated_precision"] >= target
    assert counts[0] > counts[1] > counts[2] > 0
    assert precisions[2] >= precisions[0]


def test_deterministic_and_pred_probs_enter():
    x, y, a, ya = _problem(seed=6)
    given = _flip(y, 4, 0.3, seed=7)
    ev = dict(features=x, anchor_features=a)
    r1, r2 = refine(given, 4, ya, **ev), refine(given, 4, ya, **ev)
    np.testing.assert_array_equal(r1.refined_labels, r2.refined_labels)
    np.testing.assert_array_equal(r1.scores, r2.scores)
    # confident pred_probs that contradict everything move the posterior
    wrong = np.eye(4, dtype=np.float32)[(y + 2) % 4] * 0.97 + 0.01
    r3 = refine(given, 4, ya, features=x, anchor_features=a, pred_probs=wrong, pred_probs_weight=5.0)
    assert not np.array_equal(r3.scores, r1.scores)


def test_bad_input_is_one_line_error():
    x, y, a, ya = _problem(n=200)
    with pytest.raises(InputError, match="anchor_features must have shape"):
        refine(y, 4, ya, features=x, anchor_features=a[:, :5])
    with pytest.raises(InputError, match="at least 2 per class"):
        keep = np.r_[np.flatnonzero(ya != 3), np.flatnonzero(ya == 3)[:1]]
        refine(y, 4, ya[keep], features=x, anchor_features=a[keep])
    with pytest.raises(InputError, match="outside"):
        refine(np.full(200, 7), 4, ya, features=x, anchor_features=a)
    with pytest.raises(InputError, match="unknown option"):
        PosteriorOptions.from_dict({"no_such_option": 1})

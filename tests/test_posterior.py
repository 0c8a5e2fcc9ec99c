"""The posterior refiner (synref.refiners.posterior): estimated T, posterior, decision, do-no-harm."""
import numpy as np
import pytest

from synref.errors import InputError
from synref.evidence import Evidence
from synref.refiners import REFINERS, create_refiner, refine
from synref.refiners.posterior import (SEPARATE_VIEW_WEIGHT, PosteriorOptions, choose_changes, label_posterior,
                                       transition_matrix)


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


def test_registered_and_options_round_trip():
    assert "posterior" in REFINERS.names()
    opts = PosteriorOptions(neighbors=5, self_training_rounds=1, target_precision=0.9, head_steps=7)
    assert PosteriorOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(InputError, match="target precision"):
        PosteriorOptions(target_precision=1.5)
    with pytest.raises(InputError, match="folds"):
        PosteriorOptions(folds=1)
    with pytest.raises(InputError, match="head_steps"):
        PosteriorOptions(head_steps=0)
    with pytest.raises(InputError, match="on_model_check_failure"):
        PosteriorOptions(on_model_check_failure="ignore")


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
    result = refine(Evidence(given, 4, ya, features=x, anchor_features=a), "posterior", neighbors=5)
    before, after = np.mean(given == y), np.mean(result.refined_labels == y)
    assert before < 0.6 and after > 0.9
    changed = result.changed
    assert np.mean(result.refined_labels[changed] == y[changed]) > 0.85
    assert result.scores.shape == (len(y), 4) and np.allclose(result.scores.sum(1), 1, atol=1e-5)
    assert 0.4 < result.info["transition_diagonal"] < 0.75  # the noise is seen: T's diagonal ~0.55


def test_do_no_harm_with_mostly_clean_labels():
    x, y, a, ya = _problem(spread=1.4, seed=3)  # overlapping classes: the anchor prior is ~85 % right
    given = _flip(y, 4, 0.05, seed=2)
    result = refine(Evidence(given, 4, ya, features=x, anchor_features=a), "posterior")
    assert np.mean(result.refined_labels == y) >= np.mean(given == y)
    assert result.num_changed() < 0.1 * len(y)
    assert result.info["transition_diagonal"] > 0.9  # the labels are seen to be mostly right


def test_deconvolution_sees_clean_labels_through_a_weak_prior():
    x, y, a, ya = _problem(spread=2.0, seed=3)
    given = _flip(y, 4, 0.03, seed=2)
    ev = Evidence(given, 4, ya, features=x, anchor_features=a)
    kw = dict(self_training_rounds=0, neighbors=0)
    plain = refine(ev, "posterior", deconvolve=False, **kw)
    corrected = refine(ev, "posterior", **kw)
    assert plain.info["transition_diagonal"] < 0.8 < corrected.info["transition_diagonal"]  # truth 0.97
    assert corrected.num_changed() < plain.num_changed()


def test_target_precision_trades_changes_for_precision():
    x, y, a, ya = _problem(spread=1.6, seed=4)
    given = _flip(y, 4, 0.4, seed=5)
    ev = Evidence(given, 4, ya, features=x, anchor_features=a, pred_probs=None)
    counts, precisions = [], []
    for target in (None, 0.97, 0.99):
        res = refine(ev, "posterior", neighbors=5, target_precision=target)
        counts.append(res.num_changed())
        changed = res.changed
        precisions.append(np.mean(res.refined_labels[changed] == y[changed]))
        if target is not None:
            assert res.decision.estimated_precision >= target
    assert counts[0] > counts[1] > counts[2] > 0
    assert precisions[2] >= precisions[0]


def test_deterministic_and_pred_probs_enter():
    x, y, a, ya = _problem(seed=6)
    given = _flip(y, 4, 0.3, seed=7)
    ev = Evidence(given, 4, ya, features=x, anchor_features=a)
    r1, r2 = refine(ev, "posterior"), refine(ev, "posterior")
    np.testing.assert_array_equal(r1.refined_labels, r2.refined_labels)
    np.testing.assert_array_equal(r1.scores, r2.scores)
    # confident pred_probs that contradict everything move the posterior
    wrong = np.eye(4, dtype=np.float32)[(y + 2) % 4] * 0.97 + 0.01
    r3 = refine(Evidence(given, 4, ya, features=x, anchor_features=a, pred_probs=wrong), "posterior",
                pred_probs_weight=5.0)
    assert not np.array_equal(r3.scores, r1.scores)


def test_per_fold_spaces_are_refined_fold_by_fold():
    x, y, a, ya = _problem(n=1200, seed=8)
    given = _flip(y, 4, 0.4, seed=9)
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))[0].astype(np.float32)
    folds = np.arange(1200) % 2
    # fold 1 lives in a rotated space: its samples and its anchors are rotated alike
    feats = np.where(folds[:, None] == 1, x @ rotation, x).astype(np.float32)
    ev = Evidence(given, 4, ya, features=feats, anchor_features=np.stack([a, a @ rotation]), fold_ids=folds)
    result = refine(ev, "posterior", neighbors=5)
    assert np.mean(given == y) < 0.65 and np.mean(result.refined_labels == y) > 0.85
    assert len(result.info["spaces"]) == 2
    # the same as refining each fold on its own in its own space
    for k in (0, 1):
        rows = folds == k
        alone = refine(Evidence(given[rows], 4, ya, features=feats[rows], anchor_features=ev.anchor_features[k]),
                       "posterior", neighbors=5)
        np.testing.assert_array_equal(alone.refined_labels, result.refined_labels[rows])


def test_is_registered_and_the_default():
    from synref.refiners import DEFAULT_REFINER
    assert "posterior" in REFINERS and DEFAULT_REFINER == "posterior"


def test_bad_evidence_is_one_line_error():
    x, y, a, ya = _problem(n=200)
    with pytest.raises(InputError, match="needs evidence.features"):
        refine(Evidence(y, 4, ya, pred_probs=np.full((200, 4), 0.25)), "posterior")
    with pytest.raises(InputError, match="at least 2 per class"):
        keep = np.r_[np.flatnonzero(ya != 3), np.flatnonzero(ya == 3)[:1]]
        refine(Evidence(y, 4, ya[keep], features=x, anchor_features=a[keep]), "posterior")
    with pytest.raises(InputError):
        create_refiner("posterior", no_such_option=1)


def test_pred_probs_count_only_as_a_separate_view():
    x, y, a, ya = _problem(seed=10)
    given = _flip(y, 4, 0.3, seed=11)
    probs = np.eye(4, dtype=np.float32)[(y + 2) % 4] * 0.9 + 0.025
    results = {}
    for view in (None, "same", "separate"):
        desc = {} if view is None else {"pred_probs_view": view}
        ev = Evidence(given, 4, ya, features=x, anchor_features=a, pred_probs=probs, description=desc)
        results[view] = refine(ev, "posterior", neighbors=5)
    assert results[None].info["pred_probs_weight"] == results["same"].info["pred_probs_weight"] == 0.0
    assert results["separate"].info["pred_probs_weight"] == SEPARATE_VIEW_WEIGHT == 3.0
    np.testing.assert_array_equal(results[None].scores, results["same"].scores)
    assert not np.array_equal(results["same"].scores, results["separate"].scores)
    # the typed field says the same as the description key, and is what the facts record
    typed = Evidence(given, 4, ya, features=x, anchor_features=a, pred_probs=probs, pred_probs_view="separate")
    assert typed.description["pred_probs_view"] == "separate"
    np.testing.assert_array_equal(refine(typed, "posterior", neighbors=5).scores, results["separate"].scores)
    with pytest.raises(InputError, match="pred_probs_view must be one of same, separate, got 'other'"):
        Evidence(given, 4, ya, features=x, anchor_features=a, pred_probs=probs, pred_probs_view="other")


def test_evidence_builders_say_which_view_pred_probs_are():
    from synref.evidence import linear_head_evidence
    x, y, a, ya = _problem(n=200, seed=12)
    ev = linear_head_evidence(x, y, a, ya, num_classes=4, folds=2)
    assert ev.description["pred_probs_view"] == "same"


def test_model_check_changes_nothing_when_the_anchors_do_not_describe_the_images():
    x, y, a, ya = _problem(n=800, spread=0.3, seed=13)
    # anchors from another geometry (a domain gap the held-out anchors cannot see): the anchor
    # prior is little better than chance on the real images, while their clean labels are consistent
    other = np.random.default_rng(99).normal(size=(4, 16)).astype(np.float32)
    gap = other[ya] + 0.3 * np.random.default_rng(1).normal(size=a.shape).astype(np.float32)
    ev = Evidence(y, 4, ya, features=x, anchor_features=gap)
    unchecked = refine(ev, "posterior", min_model_fit=None)
    assert np.mean(unchecked.refined_labels == y) < 0.95  # without the check clean labels get worse
    checked = refine(ev, "posterior")  # no pred_probs: the fallback has no evidence, nothing changes
    assert checked.num_changed() == 0 and checked.decision.model_check.startswith("failed")
    assert checked.decision.decided_by == "none" and "no label was changed" in checked.decision.model_check
    assert checked.decision.model_fit < 0.5 <= refine(Evidence(y, 4, ya, features=x, anchor_features=a),
                                                      "posterior").decision.model_fit


def _gap_problem(noise_rate):
    """Anchors from another geometry than the real images (the model check fails), noisy labels
    and out-of-sample pred_probs of a linear head on them."""
    from synref.train.linear import cross_fit_linear
    x, y, a, ya = _problem(n=800, spread=0.3, seed=13)
    gap = np.random.default_rng(99).normal(size=(4, 16)).astype(np.float32)[ya]
    gap = gap + 0.3 * np.random.default_rng(1).normal(size=a.shape).astype(np.float32)
    given = _flip(y, 4, noise_rate, seed=14, pairs=False)
    probs = cross_fit_linear(x, given, num_classes=4, folds=4, seed=0)
    return Evidence(given, 4, ya, features=x, anchor_features=gap, pred_probs=probs), y


def test_failed_model_check_falls_back_to_confident_learning_on_pred_probs():
    from synref.refiners.confident import FALLBACK_FILTER, confident_learning_correction
    ev, y = _gap_problem(0.1)
    res = refine(ev, "posterior")
    assert res.decision.model_check.startswith("failed") and res.decision.decided_by == "confident-learning"
    corrected, flagged = confident_learning_correction(ev.labels, ev.pred_probs, filter_by=FALLBACK_FILTER)
    np.testing.assert_array_equal(res.refined_labels, corrected)  # cleanlab decided, argmax relabelled
    assert 0 < res.num_changed() == int(np.sum(corrected != ev.labels))
    assert np.mean(res.refined_labels == y) > np.mean(ev.labels == y) + 0.05
    np.testing.assert_allclose(res.scores, ev.pred_probs)  # the scores shown are the ones that decided
    kept = refine(ev, "posterior", on_model_check_failure="keep")
    assert kept.num_changed() == 0 and kept.decision.decided_by == "none"
    strict = refine(ev, "posterior", target_precision=0.99)  # the prefix rule on pred_probs' confidence
    assert strict.num_changed() < res.num_changed()
    assert "precision_temperature" not in strict.info  # the failing space was not calibrated
    assert np.all(flagged[strict.refined_labels != ev.labels])


def test_confident_learning_fallback_leaves_clean_labels_nearly_alone():
    ev, y = _gap_problem(0.0)
    res = refine(ev, "posterior")
    assert res.decision.decided_by == "confident-learning"
    assert np.mean(res.refined_labels == y) >= 0.99


def test_target_precision_calibrates_on_planted_anchors():
    from synref.refiners.posterior import TEMPERATURE_GRID, temper
    x, y, a, ya = _problem(n=600, spread=0.45, seed=21)
    given = _flip(y, 4, 0.3, seed=22)
    ev = Evidence(given, 4, ya, features=x, anchor_features=a)
    raw = refine(ev, "posterior", neighbors=5, target_precision=0.9, calibrate_precision=False)
    cal = refine(ev, "posterior", neighbors=5, target_precision=0.9)
    tau = cal.info["precision_temperature"]
    assert "precision_temperature" not in raw.info and tau in TEMPERATURE_GRID and tau != 1.0
    # the same posterior, its confidence rescaled by the planted samples' temperature; same argmax
    np.testing.assert_allclose(cal.scores, temper(raw.scores, tau), atol=1e-5)
    np.testing.assert_array_equal(cal.best_class, raw.best_class)
    assert cal.decision.estimated_precision >= 0.9 - 1e-6
    # no target, no calibration (the default decision does not depend on the confidence scale)
    assert "precision_temperature" not in refine(ev, "posterior", neighbors=5).info


def test_temper_keeps_the_argmax_and_sharpens_or_flattens():
    from synref.refiners.posterior import temper
    post = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    np.testing.assert_allclose(temper(post, 1.0), post, atol=1e-6)
    flat, sharp = temper(post, 2.0), temper(post, 0.5)
    assert (flat.argmax(1) == post.argmax(1)).all() and (sharp.argmax(1) == post.argmax(1)).all()
    assert (flat.max(1) < post.max(1)).all() and (sharp.max(1) > post.max(1)).all()
    np.testing.assert_allclose(flat.sum(1), 1.0, atol=1e-6)


def test_self_training_is_skipped_when_its_posterior_cannot_decide():
    """The model check reads only the anchor-only prior, so it is made before self-training:
    when it fails (or too few given labels per class let nothing change) the rounds, whose
    posterior would decide nothing, are not run; the decision is the same as with them."""
    from synref.arrays import UnitRows, l2_normalize
    from synref.refiners.posterior import PosteriorRefiner
    ev, _ = _gap_problem(0.1)
    res = refine(ev, "posterior")
    assert res.decision.decided_by == "confident-learning"
    assert res.info["self_training_skipped"].startswith("the model check failed")
    assert [r["round"] for r in res.info["rounds"]] == [0]
    # every round run anyway (the old behaviour): the same labels change
    full = PosteriorRefiner(PosteriorOptions())
    x, a = UnitRows(ev.features), l2_normalize(ev.anchor_features)
    post, _, stats, _ = full._posterior(x, a, ev.labels, ev.anchor_labels, 4, pred_probs=None,
                                        pred_probs_weight=0.0, seed=ev.seed, true_labels=None)
    assert [r["round"] for r in stats["rounds"]] == [0, 1, 2] and stats["model_fit"] == res.info["model_fit"]
    # a passing check self-trains as before
    x2, y2, a2, ya2 = _problem(n=400, seed=3)
    good = refine(Evidence(y2, 4, ya2, features=x2, anchor_features=a2), "posterior")
    assert "self_training_skipped" not in good.info and len(good.info["rounds"]) == 3
    short = refine(ev, "posterior", min_rows_per_class=1000)
    assert short.info["self_training_skipped"].startswith("too few given labels")


def test_fit_temperature_finds_the_grid_minimum_of_the_likelihood():
    """The binary search over the grid returns what scoring all 41 temperatures returns."""
    from synref.refiners.posterior import TEMPERATURE_GRID, fit_temperature
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(150):
        n, c = int(rng.integers(5, 200)), int(rng.integers(2, 30))
        z = (rng.normal(size=(n, c)) * rng.uniform(0.1, 20)).astype(np.float32)
        y = rng.integers(0, c, n)
        z[np.arange(n), y] += rng.uniform(0, 8)
        scaled = [z.astype(np.float64) / t for t in TEMPERATURE_GRID]
        brute = [float(np.mean(s.max(1) + np.log(np.exp(s - s.max(1, keepdims=True)).sum(1)) - s[np.arange(n), y]))
                 for s in scaled]  # mean -log softmax(z / t)[y], every temperature
        best = TEMPERATURE_GRID[int(np.argmin(brute))]
        assert fit_temperature(z, y) == best
        seen.add(best)
    assert len(seen) > 5  # the cases reach many grid points, ends included

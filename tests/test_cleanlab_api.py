"""synref.cleanlab_api: cleanlab-shaped views of the refinement."""
import numpy as np
import pytest

from synref import cleanlab_api as api
from synref.errors import InputError
from synref.refiners import refine_labels


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    c, d, n = 5, 16, 600
    centers = rng.normal(size=(c, d)) * 3
    true = rng.integers(0, c, n)
    feats = (centers[true] + rng.normal(size=(n, d))).astype(np.float32)
    noisy = true.copy()
    flip = rng.random(n) < 0.3
    noisy[flip] = (true[flip] + 1) % c
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), noisy] += 1.5
    logits[np.arange(n), true] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # float64, as many users have
    anchor_labels = np.repeat(np.arange(c), 10)
    anchor_feats = centers[anchor_labels] + 0.5 * rng.normal(size=(len(anchor_labels), d))
    # the score-rule tests below name the paper refiner (the default, posterior, is tested apart)
    return dict(true=true, noisy=noisy, feats=feats, probs=probs, anchors=dict(
        anchor_features=anchor_feats, anchor_labels=anchor_labels, refiner="paper"))


def _ref(p, **kw):
    anchors = {k: v for k, v in p["anchors"].items() if k != "refiner"}
    return refine_labels(p["noisy"], pred_probs=p["probs"], features=p["feats"], **anchors, **kw)


def test_default_refiner_is_the_posterior(problem):
    from synref.evidence import Evidence
    from synref.refiners import refine

    p = problem
    anchors = {k: v for k, v in p["anchors"].items() if k != "refiner"}
    expected = refine(Evidence(p["noisy"], 5, anchors["anchor_labels"], features=p["feats"],
                               anchor_features=anchors["anchor_features"]), "posterior")
    mask = api.find_label_issues(p["noisy"], p["probs"], features=p["feats"], **anchors)
    np.testing.assert_array_equal(mask, expected.changed)
    fixed = api.suggest_labels(p["noisy"], p["probs"], features=p["feats"], **anchors)
    assert (fixed == p["true"]).mean() > 0.95 > 0.75 > (p["noisy"] == p["true"]).mean()
    strict = api.suggest_labels(p["noisy"], p["probs"], features=p["feats"], target_precision=0.999, **anchors)
    assert (strict != p["noisy"]).sum() <= (fixed != p["noisy"]).sum()
    with pytest.raises(InputError, match="prototypes"):
        api.find_label_issues(p["noisy"], p["probs"], features=p["feats"], prototypes=np.eye(5, 16))
    with pytest.raises(InputError, match="unknown refiner"):
        api.find_label_issues(p["noisy"], p["probs"], features=p["feats"], refiner="magic", **anchors)


def test_mask_quality_and_suggestions_match_refinement(problem):
    p = problem
    ref = _ref(p, alpha=0.5, threshold=0.6)
    mask = api.find_label_issues(p["noisy"], p["probs"], features=p["feats"], **p["anchors"])
    assert mask.dtype == bool and mask.shape == p["noisy"].shape
    np.testing.assert_array_equal(mask, ref.changed)
    assert 0 < mask.sum() < len(mask)
    # Flagged samples are mostly really wrong, and the correction mostly right.
    wrong = p["noisy"] != p["true"]
    assert wrong[mask].mean() > 0.9
    fixed = api.suggest_labels(p["noisy"], p["probs"], features=p["feats"], **p["anchors"])
    np.testing.assert_array_equal(fixed, ref.refined_labels)
    assert (fixed == p["true"]).mean() > (p["noisy"] == p["true"]).mean()
    q = api.get_label_quality_scores(p["noisy"], p["probs"], features=p["feats"], **p["anchors"])
    np.testing.assert_array_equal(q, ref.label_quality)
    assert q.shape == (len(p["noisy"]),) and 0 <= q.min() and q.max() <= 1
    assert q[wrong].mean() < q[~wrong].mean()
    # Given label == best class -> quality 1.
    assert np.all(q[ref.best_class == p["noisy"]] == 1)


def test_rankings(problem):
    p = problem
    ref = _ref(p)
    kw = dict(features=p["feats"], **p["anchors"])
    sev = api.find_label_issues(p["noisy"], p["probs"], return_indices_ranked_by="severity", **kw)
    np.testing.assert_array_equal(sev, ref.ranked_issues())
    nm = api.find_label_issues(p["noisy"], p["probs"], return_indices_ranked_by="normalized_margin", **kw)
    np.testing.assert_array_equal(nm, sev)
    sc = api.find_label_issues(p["noisy"], p["probs"], return_indices_ranked_by="self_confidence", **kw)
    assert set(sc) == set(np.flatnonzero(ref.changed))
    assert np.all(np.diff(ref.given_score[sc]) >= 0)
    lq = api.find_label_issues(p["noisy"], p["probs"], return_indices_ranked_by="label_quality", **kw)
    assert np.all(np.diff(ref.label_quality[lq]) >= 0)
    with pytest.raises(InputError, match="return_indices_ranked_by"):
        api.find_label_issues(p["noisy"], p["probs"], return_indices_ranked_by="entropy", **kw)


def test_accepts_lists_and_float_dtypes(problem):
    p = problem
    base = api.find_label_issues(p["noisy"], p["probs"], features=p["feats"], **p["anchors"])
    for probs in (p["probs"].astype(np.float32), p["probs"].astype(np.float16), p["probs"].tolist()):
        mask = api.find_label_issues(list(p["noisy"]), probs, features=p["feats"], **p["anchors"])
        # float16 rounding may move a borderline sample or two, nothing more.
        assert (mask != base).sum() <= 2


def test_pred_probs_none_needs_alpha_one(problem):
    p = problem
    only = api.suggest_labels(p["noisy"], None, features=p["feats"], alpha=1.0, threshold=0.8, **p["anchors"])
    ref = refine_labels(p["noisy"], pred_probs=None, features=p["feats"], alpha=1.0, threshold=0.8, **{k: v for k, v in p["anchors"].items() if k != "refiner"})
    np.testing.assert_array_equal(only, ref.refined_labels)
    with pytest.raises(InputError, match="pred_probs are needed"):
        api.find_label_issues(p["noisy"], None, features=p["feats"], alpha=0.5, **p["anchors"])


def test_calibrate_uses_anchor_temperature(problem):
    from synref.refiners import class_prototypes, fit_similarity_temperature, prototype_similarity, relabel, \
        score_matrix, similarity_to_probs

    p = problem
    t = fit_similarity_temperature(p["anchors"]["anchor_features"], p["anchors"]["anchor_labels"], 5)
    protos = class_prototypes(p["anchors"]["anchor_features"], p["anchors"]["anchor_labels"], 5)
    sim = similarity_to_probs(prototype_similarity(p["feats"], protos), t)
    ref = relabel(p["noisy"], score_matrix(p["probs"], sim), threshold=0.6)
    mask = api.find_label_issues(p["noisy"], p["probs"], features=p["feats"], calibrate=True, **p["anchors"])
    np.testing.assert_array_equal(mask, ref.changed)
    q = api.get_label_quality_scores(p["noisy"], p["probs"], features=p["feats"], temperature=t, **p["anchors"])
    np.testing.assert_array_equal(q, ref.label_quality)


@pytest.mark.parametrize("mutate,match", [
    (lambda pr: pr * 3, r"pred_probs: row 0 sums to 3, not 1; pass softmax probabilities"),
    (lambda pr: np.log(pr), r"pred_probs: sample 0 has a negative value .*not logits"),
    (lambda pr: np.where(np.arange(len(pr))[:, None] == 7, np.nan, pr), r"pred_probs: sample 7 has a NaN"),
    (lambda pr: pr[:, :1], r"at least 2 class columns"),
    (lambda pr: pr[:-1], r"pred_probs has 599 rows but there are 600 labels"),
    (lambda pr: pr[None], r"must be 2-D"),
    (lambda pr: pr.astype(str), r"must be numbers"),
])
def test_bad_pred_probs_are_explained(problem, mutate, match):
    p = problem
    with pytest.raises(InputError, match=match):
        api.find_label_issues(p["noisy"], mutate(p["probs"]), features=p["feats"], **p["anchors"])


def test_bad_labels_and_features(problem):
    p = problem
    kw = dict(features=p["feats"], **p["anchors"])
    with pytest.raises(InputError, match="1-D"):
        api.find_label_issues(p["noisy"][:, None], p["probs"], **kw)
    with pytest.raises(InputError, match="integer class indices"):
        api.find_label_issues(p["noisy"] + 0.5, p["probs"], **kw)
    bad = p["noisy"].copy()
    bad[4] = 7
    with pytest.raises(InputError, match="sample 4 has label 7"):
        api.find_label_issues(bad, p["probs"], **kw)
    with pytest.raises(InputError, match="feature rows"):
        api.find_label_issues(p["noisy"], p["probs"], features=p["feats"][:-1], **p["anchors"])
    with pytest.raises(InputError, match="dimensions"):
        api.find_label_issues(p["noisy"], p["probs"], features=p["feats"][:, :3], **p["anchors"])
    feats = p["feats"].copy()
    feats[9, 0] = np.inf
    with pytest.raises(InputError, match="features: sample 9"):
        api.find_label_issues(p["noisy"], p["probs"], features=feats, **p["anchors"])
    with pytest.raises(InputError, match="anchor"):
        api.find_label_issues(p["noisy"], p["probs"], features=p["feats"])


def test_module_docstring_maps_to_cleanlab():
    doc = api.__doc__
    for needle in ("cleanlab.filter.find_label_issues", "cleanlab.rank.get_label_quality_scores",
                   "correction", "given score / best score", "best - given"):
        assert needle in doc

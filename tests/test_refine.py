import numpy as np
import pytest

from synref.errors import InputError
from synref.refiners import (
    class_prototypes,
    prototype_similarity,
    refine_labels,
    relabel,
    relabel_metrics,
    score_matrix,
)


def _loop_reference(labels, probs, feats, anchor_feats, anchor_labels, alpha, threshold):
    """The paper's rule written per sample, straight from the formula."""
    num_classes = probs.shape[1]
    protos = [anchor_feats[anchor_labels == c].mean(axis=0) for c in range(num_classes)]
    out = labels.copy()
    for i in range(len(labels)):
        scores = []
        for c in range(num_classes):
            cos = feats[i] @ protos[c] / (np.linalg.norm(feats[i]) * np.linalg.norm(protos[c]))
            scores.append(alpha * cos + (1 - alpha) * probs[i, c])
        best = int(np.argmax(scores))
        if scores[best] >= threshold:
            out[i] = best
    return out


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    num_classes, dim, n = 5, 16, 400
    centers = rng.normal(size=(num_classes, dim)) * 3
    true = rng.integers(0, num_classes, n)
    feats = centers[true] + rng.normal(size=(n, dim))
    anchor_labels = np.repeat(np.arange(num_classes), 20)
    anchor_feats = centers[anchor_labels] + rng.normal(size=(len(anchor_labels), dim)) * 0.5
    noisy = true.copy()
    flip = rng.random(n) < 0.4
    noisy[flip] = (true[flip] + 1) % num_classes
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), noisy] += 2.0  # a classifier that learned the noisy labels
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return dict(true=true, noisy=noisy, feats=feats, probs=probs, anchor_feats=anchor_feats,
                anchor_labels=anchor_labels, num_classes=num_classes)


def test_matches_per_sample_formula(problem):
    p = problem
    for alpha, thr in [(0.5, 0.6), (0.8, 0.5), (1.0, 0.9), (0.0, 0.3)]:
        res = refine_labels(p["noisy"], pred_probs=p["probs"], features=p["feats"],
                            anchor_features=p["anchor_feats"], anchor_labels=p["anchor_labels"],
                            alpha=alpha, threshold=thr)
        ref = _loop_reference(p["noisy"], p["probs"], p["feats"], p["anchor_feats"], p["anchor_labels"], alpha, thr)
        np.testing.assert_array_equal(res.refined_labels, ref)


def test_refinement_fixes_labels_with_good_anchors(problem):
    p = problem
    res = refine_labels(p["noisy"], pred_probs=p["probs"], features=p["feats"],
                        anchor_features=p["anchor_feats"], anchor_labels=p["anchor_labels"],
                        alpha=0.9, threshold=0.5)
    m = res.evaluate(p["true"])
    assert m["noisy_label_acc"] < 0.65
    assert m["refined_label_acc"] > 0.95
    assert m["relabel_precision"] > 0.9
    assert res.num_changed() == m["num_changed"] > 0


def test_result_views(problem):
    p = problem
    res = refine_labels(p["noisy"], pred_probs=p["probs"], features=p["feats"],
                        anchor_features=p["anchor_feats"], anchor_labels=p["anchor_labels"],
                        alpha=0.9, threshold=0.5)
    assert res.scores.shape == (len(p["noisy"]), p["num_classes"])
    np.testing.assert_array_equal(res.issue_mask, res.refined_labels != p["noisy"])
    q = res.label_quality
    assert q.shape == p["noisy"].shape and q.min() >= 0 and q.max() <= 1
    assert np.all(q[~res.changed & (res.best_class == p["noisy"])] == 1)
    ranked = res.ranked_issues()
    assert set(ranked) == set(np.flatnonzero(res.changed))
    margins = res.best_score[ranked] - res.given_score[ranked]
    assert np.all(np.diff(margins) <= 1e-7)


def test_threshold_keeps_label_below(problem):
    p = problem
    res = refine_labels(p["noisy"], pred_probs=p["probs"], features=p["feats"],
                        anchor_features=p["anchor_feats"], anchor_labels=p["anchor_labels"],
                        alpha=0.5, threshold=2.0)  # unreachable: nothing may change
    assert res.num_changed() == 0


def test_chunking_equals_single_block(problem, monkeypatch):
    import synref.refiners.kernel as refine_mod
    p = problem
    kwargs = dict(pred_probs=p["probs"], features=p["feats"], anchor_features=p["anchor_feats"],
                  anchor_labels=p["anchor_labels"], alpha=0.6, threshold=0.55)
    whole = refine_labels(p["noisy"], **kwargs)
    monkeypatch.setattr(refine_mod, "_CHUNK_ROWS", 7)
    chunked = refine_labels(p["noisy"], **kwargs)
    np.testing.assert_array_equal(whole.refined_labels, chunked.refined_labels)
    np.testing.assert_allclose(whole.scores, chunked.scores, rtol=1e-6)


def test_prototypes_are_class_means():
    feats = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    protos = class_prototypes(feats, np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(protos, [[2.0, 0.0], [0.0, 2.0]])
    sim = prototype_similarity(np.array([[1.0, 1.0]]), protos)
    np.testing.assert_allclose(sim, [[np.sqrt(0.5), np.sqrt(0.5)]], rtol=1e-6)


def test_class_without_anchors_is_named():
    with pytest.raises(InputError, match=r"class 2 \('bird'\) has no anchors"):
        class_prototypes(np.ones((2, 3)), np.array([0, 1]), 3, class_names=["a", "b", "bird"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_are_named(problem, bad):
    p = problem
    feats = p["feats"].copy()
    feats[17, 3] = bad
    with pytest.raises(InputError, match="features: sample 17"):
        refine_labels(p["noisy"], pred_probs=p["probs"], features=feats,
                      anchor_features=p["anchor_feats"], anchor_labels=p["anchor_labels"])


def test_bad_options_and_shapes(problem):
    p = problem
    base = dict(pred_probs=p["probs"], features=p["feats"], anchor_features=p["anchor_feats"],
                anchor_labels=p["anchor_labels"])
    with pytest.raises(InputError, match="alpha"):
        refine_labels(p["noisy"], alpha=1.5, **base)
    with pytest.raises(InputError, match="labels"):
        refine_labels(p["noisy"][:-1], **base)
    bad_labels = p["noisy"].copy()
    bad_labels[3] = 9
    with pytest.raises(InputError, match="sample 3 has label 9"):
        refine_labels(bad_labels, **base)
    with pytest.raises(InputError, match="dimensions"):
        refine_labels(p["noisy"], **{**base, "anchor_features": p["anchor_feats"][:, :4]})
    with pytest.raises(InputError, match="pred_probs are needed"):
        score_matrix(None, np.zeros((2, 2)), alpha=0.5)


def test_relabel_metrics_by_hand():
    noisy = np.array([0, 1, 1, 2, 2])
    refined = np.array([0, 0, 1, 1, 2])
    true = np.array([0, 0, 2, 2, 2])
    m = relabel_metrics(noisy, refined, true)
    assert m["noisy_label_acc"] == pytest.approx(3 / 5)  # right at 0, 3, 4
    assert m["refined_label_acc"] == pytest.approx(3 / 5)  # right at 0, 1, 4
    assert m["relabel_precision"] == pytest.approx(1 / 2)  # changed: idx 1 (right), 3 (wrong)
    assert m["relabel_recall"] == pytest.approx(1 / 2)  # wrong: idx 1, 2 -> only 1 fixed
    assert m["num_changed"] == 2


def test_relabel_on_scores_directly():
    scores = np.array([[0.1, 0.9], [0.55, 0.45], [0.2, 0.3]])
    res = relabel(np.array([0, 1, 0]), scores, threshold=0.5)
    np.testing.assert_array_equal(res.refined_labels, [1, 0, 0])


def test_similarity_to_probs_rows_sum_to_one_and_keep_order():
    from synref.refiners import similarity_to_probs
    sim = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.25]], dtype=np.float32)
    p = similarity_to_probs(sim, 0.05)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p.argmax(1), sim.argmax(1))
    assert similarity_to_probs(sim, 0.01)[0, 0] > p[0, 0]  # colder = more peaked
    with pytest.raises(InputError, match="temperature"):
        similarity_to_probs(sim, 0.0)


def test_fitted_temperature_tracks_cluster_spread():
    from synref.refiners import fit_similarity_temperature
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 32))
    labels = np.repeat(np.arange(4), 30)
    tight = centers[labels] + 0.1 * rng.normal(size=(120, 32))
    loose = centers[labels] + 1.5 * rng.normal(size=(120, 32))
    t_tight = fit_similarity_temperature(tight, labels, 4)
    t_loose = fit_similarity_temperature(loose, labels, 4)
    # Well-separated anchors earn a colder (more confident) temperature than overlapping ones.
    assert 1e-3 <= t_tight < t_loose <= 1.0
    with pytest.raises(InputError, match=r"class 3 \('d'\) has 1 anchors"):
        fit_similarity_temperature(tight[:91], labels[:91], 4, class_names=list("abcd"))


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from synref.io import write_json

    write_json(tmp_path / "x.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~mask

"""Evidence (shapes checked on construction) and the refiners' front door."""
import numpy as np
import pytest

from synref.errors import InputError
from synref.evidence import Evidence, linear_head_evidence
from synref.refiners import (DEFAULT_REFINER, REFINERS, CrossfitOptions, RefinerOptions, create_refiner, refine,
                             refine_labels)


def _problem(n=200, c=3, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * 3
    true = rng.integers(0, c, n)
    feats = (centers[true] + rng.normal(size=(n, d))).astype(np.float32)
    noisy = np.where(rng.random(n) < 0.3, (true + 1) % c, true)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[noisy]
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    anchor_labels = np.repeat(np.arange(c), 10)
    anchors = (centers[anchor_labels] + 0.3 * rng.normal(size=(len(anchor_labels), d))).astype(np.float32)
    return dict(true=true, noisy=noisy, feats=feats, probs=probs, anchors=anchors, anchor_labels=anchor_labels, c=c)


def test_evidence_checks_shapes_naming_the_field():
    p = _problem()
    ok = dict(features=p["feats"], anchor_features=p["anchors"], pred_probs=p["probs"])
    Evidence(p["noisy"], p["c"], p["anchor_labels"], **ok)
    cases = [
        (dict(ok, features=p["feats"][:-1]), "evidence.features"),
        (dict(ok, anchor_features=p["anchors"][:, :3]), "evidence.anchor_features"),
        (dict(ok, pred_probs=p["probs"][:, :2]), "evidence.pred_probs"),
        (dict(ok, fold_ids=np.zeros(5, int)), "evidence.fold_ids"),
        (dict(ok, fold_ids=np.zeros(len(p["noisy"]), int)), "evidence.anchor_features"),  # needs (K, M, D)
        (dict(ok, class_names=["a"]), "evidence.class_names"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InputError, match=field):
            Evidence(p["noisy"], p["c"], p["anchor_labels"], **kwargs)
    with pytest.raises(InputError, match="evidence.labels"):
        Evidence(p["noisy"] + 5, p["c"], p["anchor_labels"], **ok)
    with pytest.raises(InputError, match="evidence.anchor_labels"):
        Evidence(p["noisy"], p["c"], p["anchor_labels"] + 5, **ok)


def test_refine_is_the_kernel_and_reads_memmaps(tmp_path):
    p = _problem()
    np.save(tmp_path / "f.npy", p["feats"])
    feats = np.load(tmp_path / "f.npy", mmap_mode="r")
    evidence = Evidence(p["noisy"], p["c"], p["anchor_labels"], features=feats, anchor_features=p["anchors"],
                        pred_probs=p["probs"])
    assert isinstance(evidence.features, np.memmap)
    got = refine(evidence, "paper")
    want = refine_labels(p["noisy"], pred_probs=p["probs"], features=p["feats"], anchor_features=p["anchors"],
                         anchor_labels=p["anchor_labels"])
    np.testing.assert_array_equal(got.refined_labels, want.refined_labels)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.info["refiner"] == "paper"


def test_registry_options_and_default():
    assert {"paper", "crossfit"} <= set(REFINERS.names()) and DEFAULT_REFINER in REFINERS
    assert isinstance(create_refiner("paper").options, RefinerOptions)
    assert create_refiner("crossfit", rounds=2).options == CrossfitOptions(rounds=2)
    with pytest.raises(InputError, match="unknown option"):
        create_refiner("paper", rounds=2)
    with pytest.raises(InputError, match="unknown refiner"):
        create_refiner("magic")


def test_rounds_need_refit_and_use_it():
    p = _problem(n=300)
    plain = Evidence(p["noisy"], p["c"], p["anchor_labels"], features=p["feats"], anchor_features=p["anchors"],
                     pred_probs=p["probs"])
    with pytest.raises(InputError, match="refit"):
        refine(plain, "crossfit", rounds=2)
    one = refine(plain, "crossfit", rounds=1)
    assert one.info["rounds"][0]["round"] == 0 and len(one.info["temperatures"]) == 1
    evidence = linear_head_evidence(p["feats"], p["noisy"], p["anchors"], p["anchor_labels"], num_classes=p["c"])
    seen = []
    refit = evidence.refit

    def spy(labels, round_):
        seen.append(round_)
        return refit(labels, round_)

    evidence.refit = spy
    result = refine(evidence, "crossfit", rounds=3, true_labels=p["true"])
    assert seen == [1, 2] and [r["round"] for r in result.info["rounds"]] == [0, 1, 2]
    assert len(result.info["temperatures"]) == 1  # one fixed space: calibrated once
    assert result.info["rounds"][-1]["refined_label_acc"] > np.mean(p["noisy"] == p["true"])


def test_per_fold_spaces_score_each_fold_against_its_own_prototypes():
    p = _problem(n=240)
    fold_ids = np.arange(240) % 2
    anchors = np.stack([p["anchors"], p["anchors"] * 2.0])
    evidence = Evidence(p["noisy"], p["c"], p["anchor_labels"], features=p["feats"], anchor_features=anchors,
                        pred_probs=p["probs"], fold_ids=fold_ids)
    result = refine(evidence, "paper")
    for k in range(2):
        held = fold_ids == k
        want = refine_labels(p["noisy"][held], pred_probs=p["probs"][held], features=p["feats"][held],
                             anchor_features=anchors[k], anchor_labels=p["anchor_labels"])
        np.testing.assert_array_equal(result.scores[held], want.scores)

"""synref.compare: synref next to cleanlab on the same pred_probs."""
import sys

import numpy as np
import pytest

from synref.experiments.compare import COLUMNS, compare_with_cleanlab, correction_row, format_compare_table
from synref.errors import MissingDependencyError


def _problem(seed=0, n=600, c=4, d=12):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * 3
    true = rng.integers(0, c, n)
    feats = (centers[true] + rng.normal(size=(n, d))).astype(np.float32)
    noisy = true.copy()
    flip = rng.random(n) < 0.3
    noisy[flip] = (true[flip] + 1 + rng.integers(0, c - 1, flip.sum())) % c
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), true] += 2.0
    logits[np.arange(n), noisy] += 1.0
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    anchor_labels = np.repeat(np.arange(c), 10)
    anchor_feats = centers[anchor_labels] + 0.5 * rng.normal(size=(len(anchor_labels), d))
    return noisy, true, probs, feats, anchor_feats, anchor_labels


def test_correction_row_by_hand():
    noisy = np.array([0, 1, 1, 2, 2, 0])
    true = np.array([0, 0, 2, 2, 1, 0])  # wrong: 1, 2, 4
    flagged = np.array([False, True, True, True, False, False])  # 1, 2 wrong; 3 right
    corrected = np.array([0, 0, 0, 1, 2, 0])  # 1 fixed, 2 not, 3 broken
    row = correction_row("m", noisy, true, corrected, flagged, 1.5)
    assert row["method"] == "m" and row["seconds"] == 1.5
    assert row["flagged"] == 3
    assert row["label_acc_after_correction"] == pytest.approx(3 / 6)  # right at 0, 1, 5
    assert row["flagged_precision"] == pytest.approx(2 / 3)  # flagged with a wrong given label
    assert row["flagged_recall"] == pytest.approx(2 / 3)  # wrong labels that were flagged
    assert row["fix_precision"] == pytest.approx(1 / 3)  # flagged now right: only 1
    empty = correction_row("none", noisy, true, noisy, np.zeros(6, bool), 0.0)
    assert empty["flagged"] == 0 and empty["flagged_precision"] == 0.0 and empty["flagged_recall"] == 0.0
    assert empty["label_acc_after_correction"] == pytest.approx(3 / 6)


def test_compare_rows_on_a_small_problem():
    pytest.importorskip("cleanlab")
    from cleanlab.filter import find_label_issues

    noisy, true, probs, feats, afeats, alabels = _problem()
    rows = compare_with_cleanlab(noisy, true, probs, feats, afeats, alabels, alpha=0.5, threshold=0.6)
    assert [r["method"] for r in rows][:3] == ["given labels (no correction)", "cleanlab find_label_issues + argmax",
                                               "synref paper rule (alpha 0.5, thr 0.6)"]
    assert rows[3]["method"] == "synref calibrated similarity"
    for r in rows:
        assert set(COLUMNS) <= set(r)
    assert rows[0]["label_acc_after_correction"] == pytest.approx(np.mean(noisy == true))
    # The cleanlab row is cleanlab's mask with argmax(pred_probs) as the correction.
    mask = find_label_issues(noisy, probs)
    corrected = np.where(mask, probs.argmax(1), noisy)
    expected = correction_row("x", noisy, true, corrected, mask, 0.0)
    for key in COLUMNS[:-1]:
        assert rows[1][key] == pytest.approx(expected[key])
    assert rows[1]["flagged"] > 0
    # Good anchors: synref beats the uncorrected labels and flags mostly wrong labels.
    for r in rows[2:]:
        assert r["label_acc_after_correction"] > rows[0]["label_acc_after_correction"]
        assert r["flagged_precision"] > 0.8
    table = format_compare_table(rows, title="tiny")
    assert table.splitlines()[0] == "tiny"
    assert table.count("\n| ") == len(rows) + 1 and "cleanlab find_label_issues + argmax" in table
    # The rows are the bench's correction methods on the same evidence; calibrate=False drops the
    # calibrated row, include_given=False the first; alpha / threshold reach the paper rule.
    plain = compare_with_cleanlab(noisy, true, probs, feats, afeats, alabels, calibrate=False, include_given=False,
                                  threshold=0.9)
    assert [r["method"] for r in plain] == ["cleanlab find_label_issues + argmax",
                                            "synref paper rule (alpha 0.5, thr 0.9)", "synref posterior"]
    assert plain[1]["flagged"] < rows[2]["flagged"]  # a higher threshold changes fewer labels


def test_compare_out_must_be_a_folder(tmp_path):
    pytest.importorskip("cleanlab")
    from synref.errors import InputError
    from synref.experiments.compare import run_compare

    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="file"):
        run_compare("digits", out=tmp_path / "file")


def test_missing_cleanlab_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    noisy, true, probs, feats, afeats, alabels = _problem(n=50)
    with pytest.raises(MissingDependencyError, match=r"pip install cleanlab"):
        compare_with_cleanlab(noisy, true, probs, feats, afeats, alabels)
    from synref.experiments.compare import run_compare

    with pytest.raises(MissingDependencyError, match="pip install cleanlab"):
        run_compare()  # fails before any training


def test_crossfit_spaces_rows_match_a_direct_computation():
    pytest.importorskip("cleanlab")
    from cleanlab.filter import find_label_issues

    from synref.experiments.compare import compare_crossfit_spaces
    from synref.refiners import class_prototypes, prototype_similarity, relabel, score_matrix

    rng = np.random.default_rng(3)
    n, c, d, folds = 300, 3, 8, 2
    true = rng.integers(0, c, n)
    noisy = np.where(rng.random(n) < 0.3, (true + 1) % c, true)
    centers = rng.normal(size=(folds, c, d)) * 3
    fold_of = np.arange(n) % folds
    feats = centers[fold_of, true] + rng.normal(size=(n, d))
    anchor_labels = np.repeat(np.arange(c), 10)
    anchor_feats = centers[:, anchor_labels] + 0.3 * rng.normal(size=(folds, len(anchor_labels), d))
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[noisy]
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    rows = {r["method"].split(" (")[0]: r for r in compare_crossfit_spaces(noisy, true, probs, feats, fold_of,
                                                                          anchor_feats, anchor_labels)}
    mask = find_label_issues(noisy, probs)
    fixed = noisy.copy()
    fixed[mask] = probs[mask].argmax(1)
    assert rows["cleanlab find_label_issues + argmax"]["label_acc_after_correction"] == pytest.approx(np.mean(fixed == true))
    sim = np.zeros_like(probs)
    for k in range(folds):
        sim[fold_of == k] = prototype_similarity(feats[fold_of == k], class_prototypes(anchor_feats[k], anchor_labels, c))
    paper = relabel(noisy, score_matrix(probs, sim, alpha=0.5), threshold=0.6).refined_labels
    assert rows["synref paper rule"]["label_acc_after_correction"] == pytest.approx(np.mean(paper == true))
    assert rows["synref calibrated similarity"]["label_acc_after_correction"] > np.mean(noisy == true)


@pytest.mark.slow
def test_compare_cli_on_real_cifar10(capsys, tmp_path, monkeypatch):
    """Needs SYNREF_CIFAR10_DIR (official python layout) and the shared community noise files.
    With --out, a re-run resumes: no feature is computed again and the rows are the same."""
    import os
    from pathlib import Path

    data = os.environ.get("SYNREF_CIFAR10_DIR")
    noise_file = Path(__file__).resolve().parents[2] / "shared" / "data" / "noise_labels" / "cifar10-1-0.70.npy"
    if not data or not noise_file.exists():
        pytest.skip("set SYNREF_CIFAR10_DIR and keep ../shared beside the repo")
    pytest.importorskip("cleanlab")
    from synref.cli import main

    argv = ["compare", "--dataset", "cifar10", "--data", data, "--noise-file", str(noise_file), "--subset", "400",
            "--quiet", "--out", str(tmp_path / "cmp")]  # (--epochs: refused, CIFAR's evidence trains no network)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cleanlab find_label_issues + argmax" in out and "synref calibrated similarity" in out
    assert list((tmp_path / "cmp" / "cells").glob("*.json")) and (tmp_path / "cmp" / "results.md").is_file()
    import synref.features.cache as cache

    def no_features(*args, **kwargs):
        raise AssertionError("features computed again on a resumed run")

    monkeypatch.setattr(cache, "compute_features", no_features)
    assert main(argv) == 0
    assert capsys.readouterr().out == out

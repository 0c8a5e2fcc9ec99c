"""The built-in demo end to end (about 30-60 s on 2 cores)."""
import json

import numpy as np

from synref.cli import main

REQUIRED = ("noisy_label_acc", "refined_label_acc", "relabel_precision", "relabel_recall",
            "standard_test_acc", "refined_test_acc")


def test_demo_end_to_end_meets_the_targets(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "paper preset" in printed and "synref default" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in REQUIRED:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["seconds"] > 0
    assert set(metrics["presets"]) == {"paper", "synref"}
    # The run really injected 70 % PMD noise into the training labels it saved.
    noisy, true = np.load(out / "noisy_labels.npy"), np.load(out / "true_labels.npy")
    assert abs(np.mean(noisy != true) - 0.7) < 0.05
    assert metrics["noisy_label_acc"] == np.mean(noisy == true)
    refined = np.load(out / "refined_labels_synref.npy")
    assert metrics["refined_label_acc"] == np.mean(refined == true)
    # The targets for synref's default at 70 % PMD: >= +10 points of label accuracy,
    # >= +5 points of test accuracy over Standard.
    assert metrics["refined_label_acc"] >= metrics["noisy_label_acc"] + 0.10
    assert metrics["refined_test_acc"] >= metrics["standard_test_acc"] + 0.05
    # ... and the gain is refinement's, not the extra training's: the same fine-tuning on the
    # noisy labels (the control) stays well below.
    synref = metrics["presets"]["synref"]
    assert synref["refined_test_acc"] >= synref["control_test_acc"] + 0.05
    config = json.loads((out / "config.json").read_text())
    assert config["noise_setting"] == "pmd-0.7" and config["presets"] == ["paper", "synref"]

"""CLI behaviour: happy paths, and bad input -> one line on stderr, exit 2, no output written."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synref import noise

from cli_helpers import assert_one_line_error, run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "noise_labels"


def test_noise_hybrid_writes_library_result(tmp_path, capsys):
    labels = np.random.default_rng(0).integers(0, 10, 500)
    np.save(tmp_path / "in.npy", labels)
    out = tmp_path / "sub" / "out.npy"
    code, stdout, _ = run(["noise", "hybrid", "--labels", tmp_path / "in.npy", "--kind", "uniform", "--rate", "0.3",
                           "--num-classes", "10", "--seed", "5", "--out", out], capsys)
    assert code == 0 and "wrote" in stdout
    expected = noise.hybrid_noise(labels, kind="uniform", rate=0.3, num_classes=10, seed=5)
    np.testing.assert_array_equal(np.load(out), expected)


@pytest.mark.skipif(not (SHARED / "cifar10-1-0.35.npy").exists(), reason=f"community noise files not found in {SHARED}")
@pytest.mark.parametrize("kind,rate,suffix", [("uniform", "0.6", "U_0.6"), ("asymmetric", "0.3", "A_0.3")])
def test_noise_hybrid_cli_reproduces_community_file(tmp_path, capsys, kind, rate, suffix):
    out = tmp_path / "o.npy"
    code, _, err = run(["noise", "hybrid", "--labels", SHARED / "cifar10-1-0.35.npy", "--kind", kind, "--rate", rate,
                        "--num-classes", "10", "--seed", "77", "--out", out], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out), np.load(SHARED / f"cifar10-1-0.35_{suffix}.npy"))


def test_noise_pmd_cli_calibrates(tmp_path, capsys):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4000, 10)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    np.save(tmp_path / "p.npy", probs)
    code, stdout, err = run(["noise", "pmd", "--probs", tmp_path / "p.npy", "--rate", "0.35", "--out",
                             tmp_path / "n.npy"], capsys)
    assert code == 0, err
    noisy = np.load(tmp_path / "n.npy")
    assert abs(np.mean(noisy != probs.argmax(1)) - 0.35) < 0.03


@pytest.mark.parametrize("case", ["missing", "out_of_range", "kind", "rate"])
def test_noise_hybrid_bad_input(tmp_path, capsys, case):
    labels = np.arange(20) % 10
    if case == "out_of_range":
        labels[7] = 12
    np.save(tmp_path / "in.npy", labels)
    args = {"--labels": tmp_path / ("nope.npy" if case == "missing" else "in.npy"), "--kind": "uniform",
            "--rate": "0.3", "--num-classes": "10", "--out": tmp_path / "out.npy"}
    if case == "kind":
        args["--kind"] = "gaussian"
    if case == "rate":
        args["--rate"] = "1.5"
    code, _, err = run(["noise", "hybrid"] + [x for kv in args.items() for x in kv], capsys)
    needle = {"missing": "nope.npy", "out_of_range": "sample 7", "kind": "gaussian", "rate": "--rate"}[case]
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("case", ["noise_kind", "rate", "noise_file_length", "noise_file_missing",
                                  "noise_file_range", "no_anchors", "out_is_file"])
def test_demo_bad_input_fails_fast(tmp_path, capsys, case):
    out = tmp_path / "demo-out"
    args = ["demo", "--quiet", "--out", out]
    needle = ""
    if case == "noise_kind":
        args += ["--noise", "gaussian"]
        needle = "gaussian"
    elif case == "rate":
        args += ["--rate", "-0.1"]
        needle = "--rate"
    elif case == "noise_file_length":
        np.save(tmp_path / "short.npy", np.zeros(10, int))
        args += ["--noise-file", tmp_path / "short.npy"]
        needle = "short.npy"
    elif case == "noise_file_missing":
        args += ["--noise-file", tmp_path / "absent.npy"]
        needle = "absent.npy"
    elif case == "noise_file_range":
        (tmp_path / "labels.txt").write_text("\n".join(["3"] * 5 + ["10"] + ["3"] * 1162) + "\n")
        args += ["--noise-file", tmp_path / "labels.txt"]
        needle = "labels.txt"
    elif case == "no_anchors":
        args += ["--anchors-per-class", "0"]
        needle = "anchors"
    elif case == "out_is_file":
        out.write_text("not a folder")
        needle = "not a folder"
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, needle)
    if case != "out_is_file":
        assert not out.exists()


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "synref", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("synref ")


def test_compare_cifar_needs_data_and_noise_file(capsys):
    code, _, err = run(["compare", "--dataset", "cifar10", "--quiet"], capsys)
    assert_one_line_error(code, err, "--data")


def test_cli_choices_are_the_registries(capsys):
    from synref.anchors import GENERATORS
    from synref.cli import build_parser
    from synref.features import FEATURE_EXTRACTORS
    from synref.refiners import REFINERS

    parser = build_parser()
    helps = {}
    for command in ("features", "refine", "generate"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        helps[command] = capsys.readouterr().out
    for name in FEATURE_EXTRACTORS.choices():            # efficientnet-lite0 included
        assert name in helps["features"] and name in helps["refine"]
    for name in REFINERS.choices():
        assert name in helps["refine"]
    for name in GENERATORS.choices():
        assert name in helps["generate"]

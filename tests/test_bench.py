"""synref bench: grid, results files, resume, CIFAR splits and anchors, CLI errors.

The grids here are shrunk with ``protocol_overrides`` (1-3 epochs) so they take seconds; the
real protocols are run by ``synref bench`` itself (see README / DEVELOPERS.md).
"""
import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

import synref.experiments.recipes as recipes
import synref.experiments.runner as runner
from synref.experiments.bench import run_bench
from synref.experiments.methods import method_base, parse_methods
from synref.experiments.protocol import Protocol
from synref.experiments.protocol import PAPER_EVIDENCE
from synref.experiments.protocol import protocol_for as bench_protocol
from synref.pipeline import EvidenceSpec, RefinerSpec
from synref.experiments.recipes import NOISE_SETTINGS
from synref.experiments.results import format_results_md
from synref.experiments.runner import parse_noise_settings
from synref.data import LabeledImages
from synref.errors import InputError
from synref.train import LRAConfig, PLCConfig, SSLConfig, TrainConfig

from cli_helpers import assert_one_line_error, run


def tiny(proto):
    """Shrink a protocol to seconds (same code paths)."""
    quick = TrainConfig(epochs=2, batch_size=64, lr=0.05, milestones=[], warmup_epochs=0)
    proto.standard = quick
    proto.finetune = dataclasses.replace(quick, lr=0.01)
    proto.plc = PLCConfig(train=quick, warmup_epochs=0, window=2)
    proto.lra = LRAConfig(epochs=2, batch_size=100, hidden=32, warmup_epochs=0, eval_every=1)
    proto.ssl = SSLConfig(epochs=1, batch_size=128)
    proto.anchors_per_class = 5
    proto.evidence = PAPER_EVIDENCE
    proto.refiner = RefinerSpec("paper", {"threshold": 0.3})  # a 2-epoch model is never confident enough for 0.6
    proto.encoder_size = 32


# ------------------------------------------------------------------------------ parsing
def test_methods_are_ordered_like_the_paper_and_checked():
    assert parse_methods(None, ["simclr"]) == ["standard", "ours", "plc", "plc+ours", "lra-simclr",
                                               "lra-simclr+ours"]
    assert parse_methods("lra-clip+ours,ours,standard,ours", ["simclr"]) == ["standard", "ours", "lra-clip+ours"]
    for bad in ("lra-foo", "magic", "plc+ours+ours", ""):
        with pytest.raises(InputError):
            parse_methods(bad, [])
    assert method_base("ours") == "standard" and method_base("plc+ours") == "plc"
    assert method_base("lra-simclr+ours") == "lra-simclr" and method_base("plc") is None


def test_noise_settings_default_and_normalised():
    assert parse_noise_settings(None) == list(NOISE_SETTINGS)
    assert parse_noise_settings("pmd-0.70, pmd-0.35+u-0.30") == ["pmd-0.7", "pmd-0.35+u-0.3"]
    with pytest.raises(InputError):
        parse_noise_settings("pmd-2")


def test_protocols_match_the_paper_and_refuse_wrong_datasets():
    paper = bench_protocol("paper", "cifar10")
    assert paper.model == "resnet34" and paper.train_size is None
    assert paper.standard.epochs == 200 and paper.standard.milestones == [60, 120, 160]
    assert paper.finetune.lr == 1e-3 and paper.finetune.epochs == 50
    assert paper.plc.train.epochs == 180 and paper.plc.warmup_epochs == 8
    assert paper.lra.epochs == 200 and paper.lra.k == 10 and paper.lra.ddim_steps == 10
    assert paper.refine == "paper" and "clip" in paper.encoders
    cpu = bench_protocol("cpu", "cifar10")
    assert cpu.train_size == 10000 and cpu.model == "small_cnn"
    assert bench_protocol("digits", "digits").refine == "synref"
    with pytest.raises(InputError, match="does not apply"):
        bench_protocol("digits", "cifar10")
    with pytest.raises(InputError, match="unknown --protocol"):
        bench_protocol("gpu", "cifar10")
    # the protocol round-trips through JSON (it is recorded next to the results)
    again = Protocol.from_dict(json.loads(json.dumps(cpu.to_dict())))
    assert again.to_dict() == cpu.to_dict()


# ------------------------------------------------------------------------------ digits grid
def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_digits_grid_results_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    methods = "standard,ours,plc,plc+ours,lra-simclr,lra-simclr+ours"
    rows = run_bench(dataset="digits", protocol="digits", out=out, methods=methods, noise="pmd-0.35,pmd-0.35+u-0.3",
                     seeds=[0], protocol_overrides=tiny)
    assert len(rows) == 12
    table = _read_csv(out / "results.csv")
    assert len(table) == 12
    for column in ("dataset", "protocol", "method", "noise", "seed", "test_acc", "label_acc", "seconds"):
        assert column in table[0]
    by = {(r["method"], r["noise"]): r for r in table}
    work = out / "work" / "digits-digits" / "seed0"
    for noise in ("pmd-0.35", "pmd-0.35+u-0.3"):
        folder = work / noise.replace("+", "_")
        noisy, refined = np.load(folder / "noisy.npy"), np.load(folder / "refined.npy")
        truth = recipes.load_experiment_data("digits", bench_protocol("digits", "digits"), seed=0).train.labels
        # label_acc is the accuracy of the labels each row trained on
        for method in ("standard", "plc", "lra-simclr"):
            assert float(by[(method, noise)]["label_acc"]) == pytest.approx(np.mean(noisy == truth))
        for method in ("ours", "plc+ours", "lra-simclr+ours"):
            assert float(by[(method, noise)]["label_acc"]) == pytest.approx(np.mean(refined == truth))
            assert float(by[(method, noise)]["refine_seconds"]) > 0
        assert (refined != noisy).any()  # the refinement changed labels
        for method in methods.split(","):
            assert 0.0 <= float(by[(method, noise)]["test_acc"]) <= 1.0
    assert abs(float(by[("standard", "pmd-0.35")]["noise_rate"]) - 0.35) < 0.05

    md = (out / "results.md").read_text()
    assert "| Method | 35% PMD | 35% PMD + 30% U |" in md
    gain = float(by[("ours", "pmd-0.35")]["test_acc"]) - float(by[("standard", "pmd-0.35")]["test_acc"])
    ours_line = next(line for line in md.splitlines() if line.startswith("| Ours (re-labeled) |"))
    assert f"({100 * gain:+.2f})" in ours_line
    assert "glyph" in md and "LRA (SimCLR) + Ours" in md

    # Resume: nothing left to do -> no cell runs, same files.
    before = (out / "results.csv").read_text()

    def boom(*a, **k):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(runner.Runner, "run_cell", boom)
    run_bench(dataset="digits", protocol="digits", out=out, methods=methods, noise="pmd-0.35,pmd-0.35+u-0.3",
              seeds=[0], protocol_overrides=tiny)
    assert (out / "results.csv").read_text() == before
    monkeypatch.undo()

    # A run killed after some cells: only the missing cells run, the shared steps are reused.
    for method in ("plc+ours", "lra-simclr"):
        os.remove(out / "cells" / f"digits__digits__{method.replace('+', '_')}__pmd-0.35__seed0.json")
    ran = []
    real = runner.Runner.run_cell

    def spy(self, method, run_):
        ran.append((method, run_.noise))
        return real(self, method, run_)

    monkeypatch.setattr(runner.Runner, "run_cell", spy)
    monkeypatch.setattr(runner.Runner, "refine", boom)  # refined labels come from the cache
    monkeypatch.setattr(runner, "noisy_labels", lambda *a, **k: (_ for _ in ()).throw(AssertionError("noise")))
    run_bench(dataset="digits", protocol="digits", out=out, methods=methods, noise="pmd-0.35,pmd-0.35+u-0.3",
              seeds=[0], protocol_overrides=tiny)
    assert sorted(ran) == [("lra-simclr", "pmd-0.35"), ("plc+ours", "pmd-0.35")]
    assert len(_read_csv(out / "results.csv")) == 12


def test_a_changed_protocol_is_refused_in_the_same_out(tmp_path):
    out = tmp_path / "bench"
    run_bench(dataset="digits", protocol="digits", out=out, methods="standard", noise="pmd-0.35", seeds=[0],
              protocol_overrides=tiny)

    def other(proto):
        tiny(proto)
        proto.standard = dataclasses.replace(proto.standard, epochs=3)

    with pytest.raises(InputError, match="different protocol"):
        run_bench(dataset="digits", protocol="digits", out=out, methods="standard", noise="pmd-0.35", seeds=[0],
                  protocol_overrides=other)


def test_config_json_reruns_the_grid(tmp_path, capsys):
    out, again = tmp_path / "bench", tmp_path / "again"
    run_bench(dataset="digits", protocol="digits", out=out, methods="standard,ours", noise="pmd-0.35", seeds=[0],
              protocol_overrides=tiny)
    config = json.loads((out / "config.json").read_text())
    assert config["_class"] == "BenchConfig"
    assert config["protocol"]["refiner"]["options"]["threshold"] == 0.3  # the edited protocol
    code, _, err = run(["bench", "--config", out / "config.json", "--out", again, "--quiet"], capsys)
    assert code == 0, err
    first, second = _read_csv(out / "results.csv"), _read_csv(again / "results.csv")
    for a, b in zip(first, second):
        assert (a["method"], a["test_acc"], a["label_acc"]) == (b["method"], b["test_acc"], b["label_acc"])
    assert len(first) == len(second) == 2


# ------------------------------------------------------------------------------ CIFAR splits
def _fake_cifar(num_classes=10, size=8):
    rng = np.random.default_rng(0)

    def make(n):
        labels = np.arange(n) % num_classes
        images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        images[..., 0] = (labels * (250 // num_classes))[:, None, None].astype(np.uint8)  # learnable signal
        return LabeledImages(images, labels.astype(np.int64), [f"class{c}" for c in range(num_classes)])

    train, test = make(50000), make(10000)
    return lambda root, split="train": train if split == "train" else test


def test_cifar_splits_use_a_validation_stand_in_and_community_files(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "load_cifar", _fake_cifar())
    proto = bench_protocol("cpu", "cifar10")
    proto.train_size = 600
    data = recipes.load_experiment_data("cifar10", proto, data="unused", seed=0)
    assert len(data.train) == 600 and len(data.test) == 10000
    # 100 anchors per class from the validation images, removed from validation
    assert len(data.anchors) == 1000 and np.bincount(data.anchors.labels).tolist() == [100] * 10
    assert len(data.val) == 4000
    assert "real-anchor stand-in" in data.anchor_source
    full = _fake_cifar()("x")
    anchor_rows = {a.tobytes() for a in data.anchors.images}
    assert not anchor_rows & {v.tobytes() for v in data.val.images}
    assert not anchor_rows & {t.tobytes() for t in data.train.images}
    assert anchor_rows <= {full.images[i].tobytes() for i in range(45000, 50000)}

    # community folder: the matching settings use their files (first train_size labels)
    folder = tmp_path / "noise"
    folder.mkdir()
    labels = (np.arange(45000) + 1) % 10
    np.save(folder / "cifar10-1-0.70.npy", labels)
    files = recipes.noise_files([str(folder)], "cifar10", NOISE_SETTINGS)
    assert list(files) == ["pmd-0.7"]
    got, info = recipes.noisy_labels("pmd-0.7", files, data, proto, 0)
    assert np.array_equal(got, labels[:600]) and "cifar10-1-0.70.npy" in info["source"]
    with pytest.raises(InputError, match="no such file"):
        recipes.noise_files([str(tmp_path / "missing")], "cifar10", NOISE_SETTINGS)


def test_cifar_cpu_grid_runs_from_a_label_file(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "load_cifar", _fake_cifar())
    labels = np.arange(45000) % 10
    flip = np.random.default_rng(1).random(45000) < 0.3
    labels[flip] = (labels[flip] + 1) % 10
    path = tmp_path / "my-noise.npy"
    np.save(path, labels)

    def small(proto):
        tiny(proto)
        proto.train_size = 500
        proto.test_size = 300
        proto.evidence = EvidenceSpec(encoder="simclr", head="linear")
        proto.refiner = RefinerSpec("posterior")

    out = tmp_path / "bench"
    rows = run_bench(dataset="cifar10", protocol="cpu", out=out, data="unused", methods="standard,ours,lra-simclr",
                     noise_files=[str(path)], seeds=[0], protocol_overrides=small)
    assert {r["noise"] for r in rows} == {"file:my-noise"} and len(rows) == 3
    md = (out / "results.md").read_text()
    assert "my-noise" in md and "real-anchor stand-in" in md
    assert "Published gains" in md  # CIFAR-10 tables carry the paper's gains for comparison
    refine = json.loads((out / "work" / "cifar10-cpu" / "seed0" / "file_my-noise" / "refined.json").read_text())
    assert refine["rule"] == "synref" and refine["encoder"].startswith("simclr") and refine["head"] == "linear"
    assert refine["refiner"] == "posterior"  # the default: self-training rounds 0, 1, 2 logged
    assert [r["round"] for r in refine["rounds"]] == [0, 1, 2] and refine["rounds"][-1]["temperature"] > 0


def test_results_md_reports_mean_and_std_over_seeds():
    rows = []
    for seed, (s, o) in enumerate([(0.50, 0.60), (0.52, 0.66)]):
        for method, acc in (("standard", s), ("ours", o)):
            rows.append({"dataset": "digits", "protocol": "digits", "method": method, "noise": "pmd-0.7",
                         "seed": seed, "test_acc": acc, "label_acc": 0.3, "seconds": 1.0,
                         "refine_seconds": 2.0 if method == "ours" else None})
    md = format_results_md(rows, {})
    assert "| Standard | 51.00 ± 1.41 |" in md
    assert "| Ours (re-labeled) | 63.00 ± 4.24 (+12.00) |" in md


# ------------------------------------------------------------------------------ CLI
def test_cli_errors_are_one_line(tmp_path, capsys):
    code, _, err = run(["bench", "--dataset", "cifar10", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "--data")
    code, _, err = run(["bench", "--methods", "lra-nothing", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "lra-nothing")
    code, _, err = run(["bench", "--protocol", "digits", "--dataset", "cifar10", "--data", tmp_path,
                        "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "--protocol digits")
    code, _, err = run(["bench", "--seeds", "a,b", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "--seeds")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ real CIFAR-10 (slow)
@pytest.mark.slow
def test_real_cifar10_bench_cell_with_community_noise(tmp_path):
    """Needs SYNREF_CIFAR10_DIR (official python layout) and ../shared's community noise files.
    A shrunken cpu protocol (2,000 images, 64 px encoder) at 70 % PMD: the refinement must raise
    the label accuracy clearly, and every row must produce a sane test accuracy."""
    data = os.environ.get("SYNREF_CIFAR10_DIR")
    noise_dir = Path(__file__).resolve().parents[2] / "shared" / "data" / "noise_labels"
    if not data or not (noise_dir / "cifar10-1-0.70.npy").is_file():
        pytest.skip("set SYNREF_CIFAR10_DIR and keep ../shared beside the repo")

    def small(proto):
        proto.train_size = 2000
        proto.test_size = 2000
        proto.encoder_size = 64
        proto.standard = dataclasses.replace(proto.standard, epochs=4, milestones=[2, 3])
        proto.finetune = dataclasses.replace(proto.finetune, epochs=2, milestones=[1])
        proto.lra = LRAConfig(epochs=100, eval_every=10, warmup_epochs=5)

    rows = run_bench(dataset="cifar10", protocol="cpu", out=tmp_path / "b", data=data, noise="pmd-0.7",
                     noise_files=[str(noise_dir)], methods="standard,ours,lra-efficientnet-lite0,"
                     "lra-efficientnet-lite0+ours", seeds=[0], protocol_overrides=small)
    by = {r["method"]: r for r in rows}
    assert by["standard"]["label_acc"] == pytest.approx(0.294, abs=0.02)  # the community file's 70 % PMD
    assert by["ours"]["label_acc"] > by["standard"]["label_acc"] + 0.15
    for row in rows:
        assert 0.0 < row["test_acc"] < 1.0, row
    # At 70 % PMD the noisy label is mostly the runner-up class: LRA on it learns the flip (the
    # full cpu grid measured 31.5 %), on the refined labels it does not.
    assert by["lra-efficientnet-lite0+ours"]["test_acc"] > by["lra-efficientnet-lite0"]["test_acc"] + 0.10


def test_paper_protocol_runs_the_papers_rule_on_cifar(tmp_path, monkeypatch):
    """The paper protocol's code path (ResNet recipe shrunk): Standard, then the paper's one-pass rule on
    the Standard model's own features, then fine-tuning."""
    monkeypatch.setattr(recipes, "load_cifar", _fake_cifar())
    labels = np.arange(45000) % 10
    path = tmp_path / "clean-ish.npy"
    np.save(path, labels)

    def small(proto):
        tiny(proto)
        proto.model = "small_cnn"
        proto.train_size = 400
        proto.test_size = 200

    rows = run_bench(dataset="cifar10", protocol="paper", out=tmp_path / "b", data="unused", methods="standard,ours",
                     noise_files=[str(path)], seeds=[0], protocol_overrides=small)
    assert len(rows) == 2 and {r["protocol"] for r in rows} == {"paper"}
    refine = json.loads((tmp_path / "b" / "work" / "cifar10-paper" / "seed0" / "file_clean-ish" /
                         "refined.json").read_text())
    assert refine["rule"] == "paper" and refine["threshold"] == 0.3
    record = json.loads((tmp_path / "b" / "bench-cifar10-paper.json").read_text())
    assert record["protocol"]["evidence"]["source"] == "classifier" and record["protocol"]["train_size"] == 400


# ------------------------------------------------------------------------------ your own data
def _user_folder(root: Path):
    """digits 0 / 1 / 7 as 8x8 PNGs in train/ (20 per class) and test/ (8 per class) split folders,
    a noisy label file for train (25 % moved to the next class) and a glyph anchor set."""
    from PIL import Image

    from synref.anchors import create_generator, generate_anchor_set
    from synref.data import load_digits_dataset, load_image_folder

    digits = load_digits_dataset()
    for c, name in enumerate(["0", "1", "7"]):
        idx = np.flatnonzero(digits.labels == int(name))
        for split, chosen in (("train", idx[:20]), ("test", idx[20:28])):
            (root / "data" / split / name).mkdir(parents=True, exist_ok=True)
            for j, i in enumerate(chosen):
                Image.fromarray(digits.images[i, :, :, 0]).save(root / "data" / split / name / f"{j:02d}.png")
    clean = load_image_folder(root / "data" / "train").labels
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(len(clean)) < 0.25, (clean + 1) % 3, clean)
    np.save(root / "noisy.npy", noisy)
    generate_anchor_set(create_generator("glyph", size=16), ["0", "1", "7"], 10, root / "anchors")
    return clean, noisy


def test_bench_on_your_own_folder_streams_and_measures(tmp_path, monkeypatch):
    """--dataset DIR with --labels: the correction rows on pretrained evidence, measured against
    the folder's own (clean) labels, a linear probe on the clean test split; files streamed."""
    from synref.features import base, cache

    clean, noisy = _user_folder(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("the user's images must be streamed, not materialized")

    monkeypatch.setattr(cache, "materialize", forbidden)
    monkeypatch.setattr(base, "materialize", forbidden)
    rows = run_bench(dataset=str(tmp_path / "data"), protocol="pretrained", out=tmp_path / "out",
                     methods="given,argmax,prototype,refine-paper", labels=str(tmp_path / "noisy.npy"),
                     anchors=str(tmp_path / "anchors"), protocol_overrides=lambda p: setattr(p, "encoder_size", 32))
    by = {r["method"]: r for r in rows}
    assert set(by) == {"given", "argmax", "prototype", "refine-paper"} and all(
        r["dataset"] == "data" and r["noise"] == "given" for r in rows)
    for method in ("argmax", "prototype"):  # every label replaced: flagged = the labels that changed
        assert by[method]["title"] in ("argmax of pred_probs", "nearest anchor prototype")
        assert 0 <= by[method]["flagged"] <= len(clean) and 0.0 <= by[method]["test_acc"] <= 1.0
    assert by["given"]["label_acc"] == pytest.approx(float(np.mean(noisy == clean)))
    assert by["given"]["noise_rate"] == pytest.approx(float(np.mean(noisy != clean)))
    assert by["given"]["flagged"] == 0 and by["refine-paper"]["flagged"] > 0
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0        # the clean test split (24 images) was probed
    features = sorted(p.name for p in (tmp_path / "out" / "work").rglob("*.npy"))
    assert any("-test-32x32-c3__" in f for f in features) and any("-train-32x32-c3__" in f for f in features)
    text = (tmp_path / "out" / "results.md").read_text()
    assert "Label correction" in text and "given labels" in text
    # every row under its own method's title; no network or SimCLR trained, none claimed
    for title in ("| argmax of pred_probs |", "| Nearest anchor prototype |", "| Refined (paper) |"):
        assert title in text, title
    for claim in ("LRA (", "model small_cnn", "SimCLR", "best clean-validation epoch", "encoders:"):
        assert claim not in text, claim
    assert "linear probe" in text and "every correction row reads the same evidence" in text
    # every cell's own time is measured (never a rounded 0), the shared evidence listed apart
    for r in rows:
        assert r["evidence_seconds"] > 0 and (r["method"] == "given" or r["seconds"] > 0)
    wall = text[text.index("Wall time"):].splitlines()
    assert any(line.startswith("| shared evidence of the correction rows |") for line in wall)
    assert not any(line.startswith("| argmax of pred_probs | 0 |") for line in wall)
    saved = _read_csv(tmp_path / "out" / "results.csv")
    assert {r["method"] for r in saved} == {"given", "argmax", "prototype", "refine-paper"}


def test_bench_on_your_own_data_errors(tmp_path, capsys):
    _user_folder(tmp_path)
    data, anchors = tmp_path / "data", tmp_path / "anchors"
    code, _, err = run(["bench", "--dataset", data, "--anchors", anchors, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "needs clean labels")
    code, _, err = run(["bench", "--dataset", data, "--anchors", anchors, "--labels", tmp_path / "noisy.npy",
                        "--methods", "standard", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "--methods standard")
    code, _, err = run(["bench", "--dataset", data, "--labels", tmp_path / "noisy.npy", "--out", tmp_path / "o"],
                       capsys)
    assert_one_line_error(code, err, "--anchors")
    code, _, err = run(["bench", "--dataset", tmp_path / "nowhere", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "nowhere")
    code, _, err = run(["bench", "--dataset", data, "--protocol", "cpu", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "--protocol pretrained")
    assert not (tmp_path / "o").exists()

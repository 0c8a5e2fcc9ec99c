"""The two refiners on their evidence (paper: the noisy model's own; crossfit: cross-fitted) on a
small synthetic image problem with a systematic label swap."""
import numpy as np
import pytest

from synref.errors import InputError
from synref.evidence import CrossFitEvidenceConfig, classifier_evidence, crossfit_evidence
from synref.models import create_model
from synref.refiners import CrossfitOptions, refine
from synref.train import SSLConfig, TrainConfig, fit


def _images(labels, rng, shift):
    """8x8 one-channel images: class c lights up row block c (two rows), plus noise."""
    imgs = rng.integers(0, 40, size=(len(labels), 8, 8, 1))
    for i, c in enumerate(labels):
        imgs[i, 2 * c:2 * c + 2, :, 0] += 180 + shift
    return np.clip(imgs, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(4), 60)
    images = _images(true, rng, 0)
    noisy = true.copy()
    swap = rng.random(len(true)) < 0.45  # semantic noise: 0<->1 and 2<->3 swapped for 45 %
    noisy[swap] = true[swap] ^ 1
    anchor_labels = np.repeat(np.arange(4), 12)
    anchors = _images(anchor_labels, rng, 30)  # a domain gap: brighter than the real images
    return dict(true=true, images=images, noisy=noisy, anchors=anchors, anchor_labels=anchor_labels)


FAST_TRAIN = TrainConfig(epochs=6, batch_size=32, lr=0.05, milestones=[4], warmup_epochs=0, augment_pad=0)


@pytest.mark.parametrize("features", ["classifier", "ssl"])
def test_crossfit_refinement_repairs_a_label_swap(problem, features):
    p = problem
    config = CrossFitEvidenceConfig(folds=3, train=FAST_TRAIN, features=features, ssl=SSLConfig(epochs=8, batch_size=64))
    evidence = crossfit_evidence(p["images"], p["noisy"], p["anchors"], p["anchor_labels"], num_classes=4,
                                 config=config)
    result = refine(evidence, "crossfit", rounds=2, true_labels=p["true"])
    metrics = result.evaluate(p["true"])
    assert metrics["noisy_label_acc"] < 0.6
    assert metrics["refined_label_acc"] > metrics["noisy_label_acc"] + 0.25, metrics
    assert len(result.info["rounds"]) == 2
    assert result.info["rounds"][-1]["refined_label_acc"] == pytest.approx(metrics["refined_label_acc"])
    sim = result.info["similarity"]
    np.testing.assert_allclose(sim.sum(1), 1.0, rtol=1e-5)  # calibrated into probabilities
    assert result.alpha == 0.5 and result.threshold == 0.6


def test_paper_refinement_uses_the_noisy_model(problem):
    p = problem
    model = fit(create_model("small_cnn", num_classes=4, in_channels=1, seed=0), p["images"], p["noisy"],
                config=FAST_TRAIN).model
    result = refine(classifier_evidence(model, p["images"], p["noisy"], p["anchors"], p["anchor_labels"]), "paper")
    assert result.info["preset"] == "paper"
    assert result.scores.shape == (len(p["noisy"]), 4)
    np.testing.assert_allclose(result.info["pred_probs"].sum(1), 1.0, rtol=1e-5)


def test_class_without_anchors_fails_before_training(problem):
    p = problem
    keep = p["anchor_labels"] != 2
    with pytest.raises(InputError, match="class 2 .'c'. has no anchors"):
        crossfit_evidence(p["images"], p["noisy"], p["anchors"][keep], p["anchor_labels"][keep], num_classes=4,
                          class_names=list("abcd"))


def test_config_validation_and_round_trip():
    with pytest.raises(InputError, match="features"):
        CrossFitEvidenceConfig(features="pixels")
    with pytest.raises(InputError, match="threshold"):
        CrossfitOptions(threshold=1.2)
    config = CrossFitEvidenceConfig(folds=3)
    again = CrossFitEvidenceConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    options = CrossfitOptions(rounds=2)
    assert CrossfitOptions.from_dict(options.to_dict()) == options


def _clustered(labels, rng, centers, spread=0.6):
    return (centers[labels] + spread * rng.standard_normal((len(labels), centers.shape[1]))).astype(np.float32)


def test_linear_head_refinement_on_a_fixed_space_repairs_a_label_swap():
    """head="linear": the cross-fitted softmax comes from a linear head on fixed features, rounds help."""
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((4, 32)).astype(np.float32)
    centers[1] = centers[0] + 0.8 * rng.standard_normal(32)  # 0/1 and 2/3 look alike
    centers[3] = centers[2] + 0.8 * rng.standard_normal(32)
    true = np.repeat(np.arange(4), 150)
    features = _clustered(true, rng, centers)
    noisy = true.copy()
    swap = rng.random(len(true)) < 0.45
    noisy[swap] = true[swap] ^ 1
    anchor_labels = np.repeat(np.arange(4), 20)
    anchor_features = _clustered(anchor_labels, rng, centers + 0.3)  # a domain gap
    images = np.zeros((len(true), 8, 8, 1), np.uint8)  # not used by the linear head
    config = CrossFitEvidenceConfig(folds=4, head="linear")
    evidence = crossfit_evidence(images, noisy, np.zeros((80, 8, 8, 1), np.uint8), anchor_labels, num_classes=4,
                                 config=config, fixed_features=(features, anchor_features))
    result = refine(evidence, "crossfit", rounds=3, true_labels=true)
    accs = [r["refined_label_acc"] for r in result.info["rounds"]]
    assert np.mean(noisy == true) < 0.6
    assert accs[-1] > np.mean(noisy == true) + 0.25, accs
    assert accs[-1] >= accs[0]  # later rounds train on cleaner labels
    assert result.info["head"] == "linear"
    with pytest.raises(InputError, match="linear"):
        crossfit_evidence(images, noisy, np.zeros((80, 8, 8, 1), np.uint8), anchor_labels, num_classes=4,
                          config=CrossFitEvidenceConfig(head="linear", features="classifier"))
    with pytest.raises(InputError, match="head"):
        CrossFitEvidenceConfig(head="forest")

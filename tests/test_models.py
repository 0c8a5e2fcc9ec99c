"""Shape contract, head reset and normalisation of the plain-torch models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synref.errors import InputError
from synref.models import MODELS, ImageClassifier, create_model

NAMES = ["small_cnn", "resnet18", "resnet34", "preact_resnet34"]
FEATURE_DIM = {"small_cnn": 128, "resnet18": 512, "resnet34": 512, "preact_resnet34": 512}


def test_registry_lists_all_models():
    assert set(NAMES) <= set(MODELS.names())
    with pytest.raises(InputError, match="unknown model"):
        create_model("vgg99", num_classes=3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hwc", [(8, 8, 1), (32, 32, 3)])
def test_shapes_and_features_feed_the_head(name, hwc):
    h, w, c = hwc
    model = create_model(name, num_classes=5, in_channels=c, seed=0)
    assert isinstance(model, ImageClassifier)
    assert model.feature_dim == FEATURE_DIM[name]
    assert isinstance(model.classifier, torch.nn.Linear)
    assert model.classifier.in_features == model.feature_dim
    assert model.num_classes == 5
    model.eval()
    x = torch.rand(3, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        assert logits.shape == (3, 5)
        assert feats.shape == (3, model.feature_dim)
        torch.testing.assert_close(model.classifier(feats), logits)
    # train mode works too (BatchNorm with a batch of 2)
    model.train()
    assert model(x[:2]).shape == (2, 5)


def test_uint8_input_is_scaled_like_float():
    model = create_model("small_cnn", num_classes=3, in_channels=3, seed=1).eval()
    x8 = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x8), model(x8.float() / 255))


def test_wrong_channel_count_is_an_input_error():
    model = create_model("small_cnn", num_classes=3, in_channels=1)
    with pytest.raises(InputError, match="expected input"):
        model(torch.rand(2, 3, 8, 8))


def test_seeded_creation_is_reproducible_and_keeps_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_model("resnet18", num_classes=4, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)          # global RNG untouched
    b = create_model("resnet18", num_classes=4, seed=7)
    c = create_model("resnet18", num_classes=4, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_reset_classifier_changes_only_the_head(name):
    model = create_model(name, num_classes=4, in_channels=1, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_classifier(generator=torch.Generator().manual_seed(5))
    after = model.state_dict()
    for k in before:
        if k.startswith("classifier."):
            assert not torch.equal(before[k], after[k]), k
        else:
            assert torch.equal(before[k], after[k]), k
    # seeded: same generator seed, same head
    w = model.classifier.weight.detach().clone()
    model.reset_classifier(generator=torch.Generator().manual_seed(5))
    assert torch.equal(w, model.classifier.weight)
    # a new class count
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.classifier.in_features == model.feature_dim
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 7)


def test_normalisation_buffers_are_used_and_saved():
    model = create_model("small_cnn", num_classes=3, in_channels=3, seed=0).eval()
    assert torch.equal(model.mean, torch.zeros(3)) and torch.equal(model.std, torch.ones(3))
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = model(x)
        mean, std = [0.2, 0.4, 0.6], [0.5, 0.25, 0.125]
        model.set_normalization(mean, std)
        normed = model(x)
        assert not torch.allclose(raw, normed)
        m = torch.tensor(mean).view(1, 3, 1, 1)
        s = torch.tensor(std).view(1, 3, 1, 1)
        # a model with identity normalisation fed the hand-normalised input agrees
        ident = create_model("small_cnn", num_classes=3, in_channels=3, seed=0).eval()
        torch.testing.assert_close(ident((x - m) / s), normed)
    sd = model.state_dict()
    assert "mean" in sd and "std" in sd
    other = create_model("small_cnn", num_classes=3, in_channels=3, seed=0)
    other.load_state_dict(sd)
    torch.testing.assert_close(other.std, torch.tensor(std))
    with pytest.raises(InputError):
        model.set_normalization([0.5], [0.5])
    with pytest.raises(InputError):
        model.set_normalization([0.5] * 3, [0.0, 1.0, 1.0])


def test_small_cnn_tiny_and_large_inputs():
    model = create_model("small_cnn", num_classes=2, in_channels=1, seed=0).eval()
    with torch.no_grad():
        for size in (4, 8, 9, 28, 64):
            assert model(torch.rand(1, 1, size, size)).shape == (1, 2)
    assert sum(p.numel() for p in model.parameters()) < 200_000
    assert np.isfinite(model.features(torch.rand(1, 1, 8, 8)).detach().numpy()).all()

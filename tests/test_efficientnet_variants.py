"""EfficientNet-Lite1 / Lite2: layouts that load the published weights strictly, and extractors."""
import numpy as np
import pytest
import torch

from synref.errors import InputError
from synref.features import FEATURE_EXTRACTORS, create_extractor
from synref.models.efficientnet import (EfficientNetLite, EfficientNetLite0, efficientnet_lite_weights_path,
                                        layer_dims, load_efficientnet_lite, state_dict_keys)


@pytest.mark.parametrize("variant,blocks,last", [(0, 16, 320), (1, 21, 320), (2, 21, 352)])
def test_layout_matches_the_published_weights(variant, blocks, last):
    state = torch.load(efficientnet_lite_weights_path(variant), weights_only=True)
    assert sorted(state) == sorted(state_dict_keys(1000, variant))
    model = load_efficientnet_lite(variant)  # strict load: every tensor's shape fits
    assert len(model._blocks) == blocks and model._conv_head.weight.shape[1] == last
    assert model.variant == variant


def test_lite0_class_is_variant_zero():
    assert list(EfficientNetLite0().state_dict()) == list(EfficientNetLite(variant=0).state_dict())
    with pytest.raises(InputError, match="variant"):
        EfficientNetLite(variant=3)


def test_variant_extractors_are_registered_and_differ():
    assert {"efficientnet-lite1", "efficientnet-lite2"} <= set(FEATURE_EXTRACTORS.names())
    images = (np.random.default_rng(0).random((3, 32, 32, 3)) * 255).astype(np.uint8)
    feats = {}
    for name in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"):
        extractor = create_extractor(name, size=64)
        feats[name] = extractor.extract(images)
        assert feats[name].shape == (3, 1280)
        np.testing.assert_allclose(np.linalg.norm(feats[name], axis=1), 1.0, rtol=1e-5)
    assert create_extractor("efficientnet-lite1", size=64).fingerprint() != \
        create_extractor("efficientnet-lite2", size=64).fingerprint()
    assert not np.allclose(feats["efficientnet-lite1"], feats["efficientnet-lite2"])


@pytest.mark.parametrize("variant", [0, 2])
def test_forward_pooled_gives_stage_ends_and_the_head(variant):
    torch.manual_seed(0)
    model = EfficientNetLite(variant=variant).eval()
    x = torch.randn(2, 3, 64, 64)
    layers = ("stage6", "stage7", "head")
    with torch.no_grad():
        pooled = model.forward_pooled(x, layers)
        # the head is forward_features; stage 7 is the last block's output, pooled
        torch.testing.assert_close(pooled[2], model.forward_features(x))
        h = model._act(model._bn0(model._conv_stem(x)))
        for block in model._blocks:
            h = block(h)
        torch.testing.assert_close(pooled[1], h.mean(dim=(2, 3)))
        only6 = model.forward_pooled(x, ("stage6",))  # stops at stage 6, same values
        torch.testing.assert_close(only6[0], pooled[0])
    assert [p.shape[1] for p in pooled] == layer_dims(variant, layers)
    assert layer_dims(variant, layers) == ([192, 320, 1280] if variant == 0 else [208, 352, 1280])


def test_layers_and_flip_features_are_unit_parts_and_mirror_invariant():
    images = (np.random.default_rng(0).random((3, 40, 40, 3)) * 255).astype(np.uint8)
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    plain = create_extractor("efficientnet-lite0", size=64)
    multi = create_extractor("efficientnet-lite0", size=64, layers="stage7,head")
    tta = create_extractor("efficientnet-lite0", size=64, layers=("stage7", "head"), flip=True)
    f_plain, f_multi, f_tta = plain.extract(images), multi.extract(images), tta.extract(images)
    assert f_multi.shape == (3, 1600) and multi.feature_dim == 1600
    # each layer has equal weight: both parts have norm 1/sqrt(2) in the unit vector
    np.testing.assert_allclose(np.linalg.norm(f_multi[:, :320], axis=1), 2 ** -0.5, rtol=1e-5)
    np.testing.assert_allclose(f_multi[:, 320:] * 2 ** 0.5, f_plain, atol=1e-5)
    # flip: the features of an image and of its mirror are the same, and differ from no flip
    np.testing.assert_allclose(tta.extract(mirrored), f_tta, atol=1e-5)
    assert not np.allclose(f_tta, f_multi, atol=1e-3)
    # the head alone keeps its fingerprint (old caches stay valid); options change it
    assert plain.fingerprint() == create_extractor("efficientnet-lite0", size=64, layers=["head"]).fingerprint()
    assert len({plain.fingerprint(), multi.fingerprint(), tta.fingerprint()}) == 3
    assert tta.describe()["layers"] == ["stage7", "head"] and tta.describe()["flip"] is True
    with pytest.raises(InputError, match="layers"):
        create_extractor("efficientnet-lite0", layers=("stage8",))
    with pytest.raises(InputError, match="layers"):
        create_extractor("efficientnet-lite0", layers=("head", "head"))


def test_ensemble_concatenates_its_networks_with_equal_weight():
    images = (np.random.default_rng(1).random((2, 32, 32, 3)) * 255).astype(np.uint8)
    ensemble = create_extractor("efficientnet-lite-ensemble", variants=(0, 2), size=64)
    f = ensemble.extract(images)
    assert f.shape == (2, ensemble.feature_dim) and ensemble.feature_dim == (192 + 320 + 1280) + (208 + 352 + 1280)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
    lite2 = create_extractor("efficientnet-lite2", size=64, layers=("stage6", "stage7", "head"), flip=True)
    np.testing.assert_allclose(f[:, 1792:] * 2 ** 0.5, lite2.extract(images), atol=1e-5)
    assert ensemble.fingerprint() != create_extractor("efficientnet-lite-ensemble", size=64).fingerprint()
    assert len(ensemble.extract(images[:0])) == 0
    with pytest.raises(InputError, match="variants"):
        create_extractor("efficientnet-lite-ensemble", variants=(0, 0))

"""EfficientNet-Lite1 / Lite2: layouts that load the published weights strictly, and extractors."""
import numpy as np
import pytest
import torch

from synref.errors import InputError
from synref.features import FEATURE_EXTRACTORS, create_extractor
from synref.models.efficientnet import (EfficientNetLite, EfficientNetLite0, efficientnet_lite_weights_path,
                                        load_efficientnet_lite, state_dict_keys)


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

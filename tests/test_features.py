"""Feature-extractor registry, classifier checkpoints, CLIP (tiny offline model), feature cache."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from synref.errors import InputError
from synref.features import (FEATURE_EXTRACTORS, FeatureExtractor, cache_path, cached_features,
                             clip_preprocess, create_extractor, extractor_names,
                             load_clip_preprocess_config)
from synref.models import load_classifier, save_classifier
from synref.models import create_model
from synref.models import extract_features

sys.path.insert(0, str(Path(__file__).parent))
from tiny_clip import CLIP_MEAN, CLIP_STD, build_tiny_clip_vision  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SYNREF_NO_PROGRESS", "1")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip_vision(tmp_path_factory.mktemp("clip") / "tiny-clip")


def _images(n=10, h=12, w=12, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _model(c=3, seed=0):
    m = create_model("small_cnn", num_classes=4, in_channels=c, seed=seed)
    m.set_normalization([0.4] * c, [0.25] * c)
    return m.eval()


# --------------------------------------------------------------------------- registry
def test_registry_lists_valid_names():
    assert {"classifier", "clip", "ssl"} <= set(extractor_names()) == set(FEATURE_EXTRACTORS.names())
    with pytest.raises(InputError) as err:
        create_extractor("dinov9")
    msg = str(err.value)
    assert "unknown encoder" in msg and "'dinov9'" in msg
    for name in ("classifier", "clip", "ssl"):
        assert name in msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- classifier
def test_classifier_extractor_equals_extract_features():
    model, x = _model(), _images(9)
    ex = create_extractor("classifier", model=model)
    assert isinstance(ex, FeatureExtractor) and ex.name == "classifier"
    got = ex.extract(x, batch_size=4)
    assert got.dtype == np.float32 and got.shape == (9, 128)
    np.testing.assert_array_equal(got, extract_features(model, x, batch_size=4))
    with pytest.raises(InputError, match="3-channel"):
        ex.extract(_images(2, c=1))
    with pytest.raises(InputError, match="exactly one"):
        create_extractor("classifier")


def test_classifier_checkpoint_round_trip(tmp_path):
    model, x = _model(), _images(6)
    path = tmp_path / "sub" / "clf.pt"
    save_classifier(model, path, name="small_cnn", num_classes=4, in_channels=3)
    torch.load(path, weights_only=True)              # plain tensors + dicts only
    loaded = load_classifier(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    a = create_extractor("classifier", model=model)
    b = create_extractor("classifier", checkpoint=path)
    np.testing.assert_array_equal(a.extract(x), b.extract(x))
    assert a.fingerprint() == b.fingerprint()          # same weights -> same cache entry
    assert a.fingerprint() != create_extractor("classifier", model=_model(seed=1)).fingerprint()
    with pytest.raises(InputError, match="not found"):
        load_classifier(tmp_path / "missing.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a synref classifier checkpoint"):
        load_classifier(tmp_path / "other.pt")
    with pytest.raises(InputError):
        save_classifier(model, tmp_path / "x.pt", name="small_cnn", num_classes=7)


def test_classifier_fingerprint_follows_in_place_weight_changes():
    model = _model()
    ex = create_extractor("classifier", model=model)
    before = ex.fingerprint()
    assert ex.fingerprint() == before
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert ex.fingerprint() != before


# --------------------------------------------------------------------------- CLIP
def test_clip_loads_tiny_model_from_dir(tiny_clip_dir):
    ex = create_extractor("clip", model=str(tiny_clip_dir))
    assert ex.device.type in ("cpu", "cuda")
    ex = create_extractor("clip", model=str(tiny_clip_dir), device="cpu")
    rgb = _images(5, 40, 30, 3)
    f1 = ex.extract(rgb, batch_size=2)
    assert f1.shape == (5, 16) and f1.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f1, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(f1, ex.extract(rgb, batch_size=2))   # deterministic
    np.testing.assert_allclose(f1, ex.extract(rgb, batch_size=5), atol=1e-6)  # other blocking
    again = create_extractor("clip", model=str(tiny_clip_dir), device="cpu")
    np.testing.assert_array_equal(f1, again.extract(rgb, batch_size=2))
    assert again.fingerprint() == ex.fingerprint()
    gray = _images(3, 28, 28, 1)
    fg = ex.extract(gray)
    assert fg.shape == (3, 16)
    np.testing.assert_allclose(fg, ex.extract(np.repeat(gray, 3, axis=-1)), atol=1e-6)
    raw = create_extractor("clip", model=str(tiny_clip_dir), device="cpu", normalize=False)
    assert raw.fingerprint() != ex.fingerprint()
    fr = raw.extract(rgb)
    np.testing.assert_allclose(fr / np.linalg.norm(fr, axis=1, keepdims=True), f1, atol=1e-5)


def test_clip_features_match_direct_transformers_forward(tiny_clip_dir):
    from transformers import CLIPVisionModelWithProjection

    ref = CLIPVisionModelWithProjection.from_pretrained(str(tiny_clip_dir)).eval()
    x = _images(4, 32, 32, 3)
    cfg = load_clip_preprocess_config(tiny_clip_dir)
    with torch.no_grad():
        want = ref(pixel_values=clip_preprocess(x, cfg)).image_embeds.numpy()
    got = create_extractor("clip", model=str(tiny_clip_dir), device="cpu",
                           normalize=False).extract(x)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _hf_processor(**kw):
    try:
        from transformers import CLIPImageProcessorPil as Proc   # PIL backend, no torchvision
    except ImportError:  # older transformers: the slow processor is numpy / PIL already
        from transformers import CLIPImageProcessor as Proc
    try:
        return Proc(**kw)
    except ImportError as exc:   # pragma: no cover - a torchvision-only version
        pytest.skip(f"CLIPImageProcessor needs torchvision here: {exc}")


@pytest.mark.parametrize("size,crop", [(224, 224), (32, 32), (20, 16)])
def test_clip_preprocessing_matches_clip_image_processor(size, crop):
    from PIL import Image

    proc = _hf_processor(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop})
    cfg = load_clip_preprocess_config(None)
    cfg.update(resize=("shortest_edge", size), crop=(crop, crop))
    for shape in [(32, 32, 3), (40, 30, 3), (17, 50, 3), (28, 28, 1), (224, 300, 3), (8, 8, 1)]:
        img = _images(1, *shape, seed=sum(shape))[0]
        # grayscale goes in as a PIL "L" image (the processor's convert_to_rgb path)
        pil_or_arr = img if shape[-1] == 3 else Image.fromarray(img[..., 0])
        want = proc(images=[pil_or_arr], return_tensors="np")["pixel_values"]
        got = clip_preprocess(img[None], cfg).numpy()
        assert got.shape == want.shape, shape
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=str(shape))


def test_clip_preprocess_config_from_dir(tiny_clip_dir, tmp_path):
    cfg = load_clip_preprocess_config(tiny_clip_dir)
    assert cfg["resize"] == ("shortest_edge", 32) and cfg["crop"] == (32, 32)
    assert cfg["mean"] == pytest.approx(CLIP_MEAN) and cfg["std"] == pytest.approx(CLIP_STD)
    default = load_clip_preprocess_config(tmp_path)          # no preprocessor_config.json
    assert default["resize"] == ("shortest_edge", 224) and default["crop"] == (224, 224)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": 64, "crop_size": 48}))
    legacy = load_clip_preprocess_config(tmp_path)           # old int-valued format
    assert legacy["resize"] == ("shortest_edge", 64) and legacy["crop"] == (48, 48)


def test_clip_missing_model_offline_is_one_line_input_error(tmp_path):
    from huggingface_hub import constants

    t0 = time.perf_counter()
    ex = create_extractor("clip", model="synref-test/no-such-clip-model", device="cpu",
                          cache_dir=tmp_path / "hub")
    with pytest.raises(InputError) as err:
        ex.extract(_images(1))
    msg = str(err.value)
    assert "no-such-clip-model" in msg and str(tmp_path / "hub") in msg
    assert "local directory" in msg and "\n" not in msg
    ex2 = create_extractor("clip", model="synref-test/no-such-clip-model", device="cpu")
    with pytest.raises(InputError) as err2:
        ex2.fingerprint()
    assert constants.HF_HUB_CACHE in str(err2.value)
    assert time.perf_counter() - t0 < 10


# --------------------------------------------------------------------------- SSL
def test_ssl_extractor_fingerprint_and_features():
    x = _images(24, 8, 8, 1)
    cfg = {"epochs": 1, "batch_size": 12}
    ex = create_extractor("ssl", images=x, config=cfg)
    fp = ex.fingerprint()
    assert fp.startswith("ssl-")
    assert fp == create_extractor("ssl", images=x.copy(), config=dict(cfg)).fingerprint()
    assert fp != create_extractor("ssl", images=x, config={**cfg, "seed": 1}).fingerprint()
    assert fp != create_extractor("ssl", images=_images(24, 8, 8, 1, seed=3),
                                  config=cfg).fingerprint()
    assert fp != create_extractor("ssl", images=x, config=cfg,
                                  extra_images=x[:4]).fingerprint()
    f = ex.extract(x[:5])
    assert f.shape == (5, 128) and f.dtype == np.float32
    np.testing.assert_array_equal(f, extract_features(ex.model, x[:5]))
    with pytest.raises(InputError, match="images"):
        create_extractor("ssl")
    with pytest.raises(InputError, match="unknown option"):
        create_extractor("ssl", images=x, config={"epoch": 1})


# --------------------------------------------------------------------------- cache
class _Counting(FeatureExtractor):
    """Row means as a 2-d feature; counts calls; can fail on the k-th call."""

    name = "counting"

    def __init__(self, tag="a", fail_on=None):
        self.tag, self.calls, self.fail_on = tag, [], fail_on

    def fingerprint(self):
        return f"counting-{self.tag}"

    def _extract(self, images, *, batch_size):
        self.calls.append(len(images))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("simulated crash")
        m = images.reshape(len(images), -1).astype(np.float32).mean(1)
        return np.stack([m, m * 2], 1)


def test_cache_hit_skips_extraction(tmp_path):
    x = _images(10)
    ex = _Counting()
    a = cached_features(ex, x, cache_dir=tmp_path, batch_size=4)
    assert ex.calls == [10]
    b = cached_features(ex, x, cache_dir=tmp_path, batch_size=4)
    assert ex.calls == [10]                                    # loaded, not recomputed
    assert isinstance(b, np.memmap) or not b.flags.writeable
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b, ex.extract(x))
    path = cache_path(ex, x, cache_dir=tmp_path)
    assert path.name.startswith("images-") and path.name.endswith("__counting-a.npy")
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["shape"] == [10, 2] and side["extractor"]["fingerprint"] == "counting-a"
    assert side["images"]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_cache_keys_differ_by_extractor_and_images(tmp_path):
    x = _images(6)
    cached_features(_Counting("a"), x, cache_dir=tmp_path)
    other = _Counting("b")
    cached_features(other, x, cache_dir=tmp_path)
    assert other.calls == [6]
    y = x.copy()
    y[0, 0, 0, 0] ^= 1
    third = _Counting("a")
    cached_features(third, y, cache_dir=tmp_path)
    assert third.calls == [6]
    assert len(list(tmp_path.glob("*.npy"))) == 3
    # a dataset key replaces the image hash in the name
    keyed = cached_features(_Counting("a"), x, cache_dir=tmp_path, dataset_key="cifar10/train")
    assert (tmp_path / "cifar10-train__counting-a.npy").exists()
    assert keyed.shape == (6, 2)


def test_cache_with_real_extractors_and_labeled_images(tmp_path, tiny_clip_dir):
    from synref.data import LabeledImages

    x = _images(5, 16, 16, 3)
    ds = LabeledImages(x, np.arange(5) % 2, ["a", "b"])
    clf = create_extractor("classifier", model=_model())
    clip = create_extractor("clip", model=str(tiny_clip_dir), device="cpu")
    f1 = cached_features(clf, ds, cache_dir=tmp_path)
    f2 = cached_features(clip, ds, cache_dir=tmp_path)
    assert f1.shape == (5, 128) and f2.shape == (5, 16)
    np.testing.assert_array_equal(f1, clf.extract(x))
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert cache_path(clf, ds, cache_dir=tmp_path) == cache_path(clf, x, cache_dir=tmp_path)


def test_cache_is_atomic_when_extraction_fails(tmp_path):
    x = _images(10)
    ex = _Counting(fail_on=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cached_features(ex, x, cache_dir=tmp_path, chunk_size=4)
    final = cache_path(ex, x, cache_dir=tmp_path)
    assert not final.exists() and not final.with_suffix(".json").exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    partial = Path(str(final) + ".partial")
    assert sorted(p.name for p in partial.glob("chunk-*.npy")) == ["chunk-000000.npy"]
    assert not [p for p in partial.iterdir() if p.name.endswith(".tmp")]


def test_cache_resumes_from_finished_chunks(tmp_path):
    x = _images(10)
    crashing = _Counting(fail_on=3)                      # chunks 0 and 1 finish, 2 crashes
    with pytest.raises(RuntimeError):
        cached_features(crashing, x, cache_dir=tmp_path, chunk_size=4)
    assert crashing.calls == [4, 4, 2]
    resumed = _Counting()
    out = cached_features(resumed, x, cache_dir=tmp_path, chunk_size=4)
    assert resumed.calls == [2]                          # only the missing chunk
    np.testing.assert_array_equal(out, _Counting().extract(x))
    final = cache_path(resumed, x, cache_dir=tmp_path)
    assert final.exists() and not Path(str(final) + ".partial").exists()
    # a different chunk size invalidates stale chunks instead of mixing them
    with pytest.raises(RuntimeError):
        cached_features(_Counting("z", fail_on=2), x, cache_dir=tmp_path, chunk_size=4)
    fresh = _Counting("z")
    cached_features(fresh, x, cache_dir=tmp_path, chunk_size=5)
    assert fresh.calls == [5, 5]


def test_cache_recomputes_when_a_reused_key_has_other_row_count(tmp_path):
    ex = _Counting()
    cached_features(ex, _images(6), cache_dir=tmp_path, dataset_key="k")
    out = cached_features(ex, _images(8), cache_dir=tmp_path, dataset_key="k")
    assert out.shape == (8, 2) and ex.calls == [6, 8]


def test_clip_hub_id_resolves_from_local_hf_cache_offline(tmp_path, tiny_clip_dir):
    """A hub id is found in a Hugging Face cache (blobs + snapshot symlinks) without network;
    the weights hash is the blob name, so the fingerprint needs no read of the weights."""
    from tiny_hf import fill_hub_cache

    snap = fill_hub_cache(tmp_path / "hub", "synref-test/tiny-clip", tiny_clip_dir)
    hub = create_extractor("clip", model="synref-test/tiny-clip", device="cpu",
                           cache_dir=tmp_path / "hub")
    local = create_extractor("clip", model=str(tiny_clip_dir), device="cpu")
    assert hub.model_dir() == snap
    assert hub.fingerprint() == local.fingerprint()         # content-addressed, not path-based
    x = _images(3, 32, 32, 3)
    np.testing.assert_array_equal(hub.extract(x), local.extract(x))

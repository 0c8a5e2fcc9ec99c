"""Anchor generators: interface, registry, match_format, and the procedural glyph generator."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from synref.anchors import (GENERATORS, AnchorGenerator, GlyphGenerator, create_generator,
                            match_format)
from synref.anchors.glyph import font_label
from synref.data import LabeledImages
from synref.errors import InputError

DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def digits32() -> LabeledImages:
    """10 digit classes x 100 glyph anchors at 32 px (about a second)."""
    return create_generator("glyph", size=32).generate(DIGITS, 100, seed=0)


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64)


def _nearest_centroid(train_x, train_y, test_x, num_classes=10):
    cents = np.stack([train_x[train_y == c].mean(0) for c in range(num_classes)])
    d = (test_x ** 2).sum(1)[:, None] - 2 * test_x @ cents.T + (cents ** 2).sum(1)[None]
    return d.argmin(1)


# ---------------------------------------------------------------------- generate / generate_one
def test_shapes_dtypes_labels_ids(digits32):
    a = digits32
    assert isinstance(a, LabeledImages)
    assert a.images.shape == (1000, 32, 32, 1) and a.images.dtype == np.uint8
    assert a.labels.dtype == np.int64
    np.testing.assert_array_equal(a.labels, np.repeat(np.arange(10), 100))
    assert a.class_names == DIGITS
    assert a.ids[0] == "glyph-0-0" and a.ids[101] == "glyph-1-1" and a.ids[-1] == "glyph-9-99"
    assert len(set(a.ids)) == 1000
    # white on black, full contrast, glyph centred (the border is mostly background)
    assert a.images.max() == 255
    assert (a.images.reshape(1000, -1).max(1) == 255).all()
    mean = a.images[..., 0].mean(0)
    assert mean[8:24, 8:24].mean() > 3 * mean[:, :2].mean()


def test_rgb_nonsquare_and_invert():
    gen = create_generator("glyph", size=(16, 24), channels=3, foreground=(255, 0, 0))
    a = gen.generate(["a", "b"], 3)
    assert a.images.shape == (6, 16, 24, 3)
    assert a.images[..., 1].max() == 0 and a.images[..., 0].max() == 255  # red on black
    inv = create_generator("glyph", size=16, invert=True).generate(["7"], 2)
    assert (inv.images[:, 0, 0] == 255).all() and inv.images.min() == 0  # dark on light


def test_deterministic_and_seed_dependent(digits32):
    gen = create_generator("glyph", size=32)
    again = gen.generate(DIGITS[:3], 5, seed=0)
    for c in range(3):
        np.testing.assert_array_equal(again.images[c * 5:(c + 1) * 5],
                                      digits32.images[c * 100:c * 100 + 5])
    other = gen.generate(DIGITS[:3], 5, seed=1)
    differ = [not np.array_equal(x, y) for x, y in zip(other.images, again.images)]
    assert sum(differ) >= 14


def test_generate_one_equals_row_of_generate(digits32):
    gen = GlyphGenerator(size=32)  # a fresh instance: no shared state needed
    for c, k in [(0, 0), (3, 17), (9, 99)]:
        np.testing.assert_array_equal(gen.generate_one(c, str(c), k, seed=0),
                                      digits32.images[c * 100 + k])


def test_texts_override_class_name():
    gen = GlyphGenerator(size=16, texts={"three": "3"})
    np.testing.assert_array_equal(gen.generate_one(2, "three", 4, seed=5),
                                  GlyphGenerator(size=16).generate_one(2, "3", 4, seed=5))


def test_diversity_within_class_and_typefaces(digits32):
    a = digits32
    for c in range(10):
        imgs = a.images[a.labels == c]
        assert len({im.tobytes() for im in imgs}) == len(imgs)
    gen = GlyphGenerator(size=32)
    fonts = {font_label(gen.draw_params(c, str(c), k)["font"])
             for c in range(10) for k in range(100)}
    assert len(fonts) >= 12, fonts
    assert {"DejaVuSans", "DejaVuSerif-Italic", "cmtt10", "STIXGeneralBol"} <= fonts
    # the same pose in two typefaces gives two different images
    sans = GlyphGenerator(size=32, fonts=["DejaVuSans.ttf"]).generate_one(0, "4", 0)
    serif = GlyphGenerator(size=32, fonts=["cmr10.ttf"]).generate_one(0, "4", 0)
    assert np.abs(sans.astype(int) - serif.astype(int)).mean() > 5


def test_fonts_without_the_glyphs_are_skipped():
    gen = GlyphGenerator(size=16)
    cyr = {font_label(f) for f in gen.fonts_for("Ж")}
    assert "DejaVuSans" in cyr and "cmr10" not in cyr
    with pytest.raises(InputError, match="no font has glyphs"):
        gen.generate(["中"], 1)


# ---------------------------------------------------------------------- usefulness of the anchors
def test_anchors_are_class_separable_at_8px(digits32):
    a8 = match_format(digits32, size=(8, 8), channels=1)
    direct = create_generator("glyph", size=8).generate(DIGITS, 100, seed=0)
    for a in (a8, direct):
        x, y = _flat(a.images), a.labels
        train = np.arange(len(y)) % 2 == 0
        pred = _nearest_centroid(x[train], y[train], x[~train])
        acc = (pred == y[~train]).mean()
        assert acc >= 0.90, acc


def test_domain_gap_to_real_digits_is_usable(digits32):
    from sklearn.datasets import load_digits

    real = load_digits()
    real_x = _flat(np.rint(real.images * 255 / 16))
    a8 = match_format(digits32, size=(8, 8), channels=1)
    pred = _nearest_centroid(_flat(a8.images), a8.labels, real_x)
    acc = (pred == real.target).mean()
    print(f"glyph-anchor nearest centroid on sklearn digits: {acc:.3f}")
    assert acc >= 0.35


# ---------------------------------------------------------------------- match_format
def test_match_format_resize_is_area_average():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(2, 8, 8, 1)).astype(np.uint8)
    big = np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)  # (2, 32, 32, 1)
    a = LabeledImages(big, np.array([0, 1]), ["a", "b"], ids=["x", "y"])
    small = match_format(a, size=(8, 8), channels=1)
    np.testing.assert_array_equal(small.images, blocks)
    assert small.ids == ["x", "y"] and small.class_names == ["a", "b"]
    np.testing.assert_array_equal(small.labels, [0, 1])
    up = match_format(small, size=16, channels=1)
    assert up.images.shape == (2, 16, 16, 1)
    # antialiased: a 1-px checkerboard averages to grey instead of aliasing
    checker = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)[None, ..., None]
    grey = match_format(LabeledImages(checker, np.array([0]), ["a"]), size=8, channels=1)
    assert np.abs(grey.images.astype(int) - 128).max() <= 1


def test_match_format_channels():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(3, 8, 8, 3)).astype(np.uint8)
    a = LabeledImages(rgb, np.array([0, 0, 1]), ["a", "b"])
    gray = match_format(a, size=8, channels=1)
    expected = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])[..., None]
    np.testing.assert_array_equal(gray.images, expected)
    back = match_format(gray, size=(8, 8), channels=3)
    assert back.images.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(back.images[..., 0], back.images[..., 2])
    np.testing.assert_array_equal(back.images[..., :1], gray.images)
    resized_rgb = match_format(a, size=(4, 6), channels=3)
    assert resized_rgb.images.shape == (3, 4, 6, 3)
    with pytest.raises(InputError, match="channels"):
        match_format(a, size=8, channels=2)
    with pytest.raises(InputError, match="size"):
        match_format(a, size=(8, 8, 8), channels=1)


# ---------------------------------------------------------------------- registry and errors
def test_registry_lookup():
    assert "glyph" in GENERATORS.names()
    gen = create_generator("glyph", size=12, channels=3)
    assert isinstance(gen, GlyphGenerator) and isinstance(gen, AnchorGenerator)
    assert gen.generate_one(0, "x", 0).shape == (12, 12, 3)
    assert gen.config()["size"] == (12, 12)


def test_unknown_generator_and_option():
    with pytest.raises(InputError, match=r"unknown generator 'nope'.*glyph"):
        create_generator("nope")
    with pytest.raises(InputError, match=r"no option 'sise'.*size"):
        create_generator("glyph", sise=32)


@pytest.mark.parametrize("names, match", [
    (["0", "1", "0"], "duplicate class name '0'"),
    (["0", ""], "class 1 has an empty name"),
    (["0", "  "], "empty name"),
    ([], "empty"),
    ("0123", "single string"),
])
def test_bad_class_names(names, match):
    with pytest.raises(InputError, match=match):
        GlyphGenerator(size=8).generate(names, 2)


@pytest.mark.parametrize("per_class", [0, -1, 1.5, True])
def test_bad_per_class(per_class):
    with pytest.raises(InputError, match="per_class"):
        GlyphGenerator(size=8).generate(["a"], per_class)


def test_bad_options():
    with pytest.raises(InputError, match="seed"):
        GlyphGenerator(size=8).generate(["a"], 1, seed=-1)
    with pytest.raises(InputError, match="channels"):
        GlyphGenerator(channels=2)
    with pytest.raises(InputError, match="fonts"):
        GlyphGenerator(fonts=["NoSuchFont.ttf"])
    with pytest.raises(InputError, match="texts"):
        GlyphGenerator(texts={"a": ""})
    with pytest.raises(InputError, match="foreground"):
        GlyphGenerator(channels=1, foreground=(255, 0, 0))
    with pytest.raises(InputError, match="fill"):
        GlyphGenerator(fill=(0.9, 0.5))

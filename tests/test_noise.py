"""Fast tests of synref.noise on synthetic labels and softmax outputs (no ../shared data)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from synref.errors import InputError
from synref.noise import (
    CIFAR10_ASYMMETRIC_MAP,
    apply_transition,
    asymmetric_noise,
    asymmetric_transition_matrix,
    calibrate_pmd_factor,
    cifar100_asymmetric_map,
    default_asymmetric_map,
    hybrid_noise,
    load_class_map,
    noise_rate,
    pmd_expected_rate,
    pmd_flip_probability,
    pmd_noise,
    uniform_noise,
    uniform_transition_matrix,
)

N = 20_000


def _labels(n: int = N, c: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, c, size=n).astype(np.int64)


def _softmax(n: int = N, c: int = 10, scale: float = 3.0, seed: int = 0) -> np.ndarray:
    z = np.random.RandomState(seed).randn(n, c) * scale
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _top2(p: np.ndarray):
    order = np.argsort(-p, axis=1, kind="stable")
    return order[:, 0], order[:, 1]


# ------------------------------------------------------------------- matrices and maps
@pytest.mark.parametrize("c,r", [(10, 0.3), (100, 0.6), (2, 1.0), (5, 0.0)])
def test_uniform_matrix(c, r):
    P = uniform_transition_matrix(c, r)
    assert P.shape == (c, c) and P.dtype == np.float64
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.diag(P) == 1.0 - r)
    off = P[~np.eye(c, dtype=bool)]
    assert np.all(off == r / (c - 1))


def test_asymmetric_matrix_cifar10():
    P = asymmetric_transition_matrix(10, 0.3, CIFAR10_ASYMMETRIC_MAP)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    expected = np.eye(10)
    for src, dst in {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}.items():
        expected[src, src] = 0.7
        expected[src, dst] = 0.3
    assert np.array_equal(P, expected)
    for c in (0, 1, 6, 7, 8):  # unmapped rows stay one-hot
        assert P[c, c] == 1.0


def test_cifar10_map_exact():
    assert dict(CIFAR10_ASYMMETRIC_MAP) == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    assert default_asymmetric_map(10) == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    with pytest.raises(TypeError):
        CIFAR10_ASYMMETRIC_MAP[0] = 1  # type: ignore[index]


def test_cifar100_map():
    m = cifar100_asymmetric_map()
    assert len(m) == 100 and default_asymmetric_map(100) == m
    assert m[0] == 1 and m[3] == 4 and m[4] == 0 and m[5] == 6 and m[9] == 5 and m[99] == 95
    for src, dst in m.items():
        assert src // 5 == dst // 5 and dst == (src // 5) * 5 + (src + 1) % 5
    assert sorted(m.values()) == list(range(100))
    P = asymmetric_transition_matrix(100, 0.3, m)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    assert P[4, 0] == 0.3 and P[4, 4] == 0.7 and P[0, 1] == 0.3


def test_default_map_unknown_classes():
    with pytest.raises(InputError, match="class map"):
        default_asymmetric_map(7)
    with pytest.raises(InputError, match="class map"):
        asymmetric_noise(_labels(10, 7), rate=0.2, num_classes=7, seed=0)


def test_asymmetric_matrix_bad_map():
    with pytest.raises(InputError, match="outside"):
        asymmetric_transition_matrix(10, 0.2, {3: 10})
    with pytest.raises(InputError, match="itself"):
        asymmetric_transition_matrix(10, 0.2, {3: 3})


# ------------------------------------------------------------------------------ sampling
def test_uniform_rate_and_targets():
    y = _labels()
    z = uniform_noise(y, rate=0.3, num_classes=10, seed=1)
    assert z.dtype == np.int64 and z.shape == y.shape
    assert abs(noise_rate(z, y) - 0.3) < 0.015
    moved = z[z != y]  # moves spread over the other classes
    counts = np.bincount(moved, minlength=10) / moved.size
    assert counts.min() > 0.07 and counts.max() < 0.13


def test_asymmetric_rate_and_untouched_classes():
    y = _labels()
    z = asymmetric_noise(y, rate=0.3, num_classes=10, seed=2)
    mapped = np.isin(y, list(CIFAR10_ASYMMETRIC_MAP))
    assert np.array_equal(z[~mapped], y[~mapped])
    changed = z != y
    assert abs(changed[mapped].mean() - 0.3) < 0.02
    for src, dst in CIFAR10_ASYMMETRIC_MAP.items():
        assert np.all(z[(y == src) & changed] == dst)


def test_asymmetric_custom_map_and_cifar100():
    y = _labels(c=100)
    z = asymmetric_noise(y, rate=0.4, num_classes=100, seed=3)
    assert abs(noise_rate(z, y) - 0.4) < 0.015
    m = cifar100_asymmetric_map()
    ch = z != y
    assert np.all(z[ch] == np.array([m[v] for v in y[ch]]))
    y5 = _labels(c=5)
    z5 = asymmetric_noise(y5, rate=0.5, num_classes=5, seed=3, class_map={0: 4})
    assert np.array_equal(z5[y5 != 0], y5[y5 != 0])
    assert set(np.unique(z5[y5 == 0])) == {0, 4}


def test_determinism_and_seeds():
    y = _labels()
    a = uniform_noise(y, rate=0.3, num_classes=10, seed=5)
    b = uniform_noise(y, rate=0.3, num_classes=10, seed=5)
    c = uniform_noise(y, rate=0.3, num_classes=10, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    a = asymmetric_noise(y, rate=0.3, num_classes=10, seed=5)
    assert np.array_equal(a, asymmetric_noise(y, rate=0.3, num_classes=10, seed=5))
    assert not np.array_equal(a, asymmetric_noise(y, rate=0.3, num_classes=10, seed=6))
    p = _softmax(2000)
    a = pmd_noise(p, factor=1.5, seed=5)
    assert np.array_equal(a, pmd_noise(p, factor=1.5, seed=5))
    assert not np.array_equal(a, pmd_noise(p, factor=1.5, seed=6))


def test_apply_transition_matches_per_sample_multinomial():
    """One RandomState multinomial draw per sample in order, also for one-hot rows."""
    y = _labels(3000)
    P = asymmetric_transition_matrix(10, 0.45, CIFAR10_ASYMMETRIC_MAP)
    rng = np.random.RandomState(11)
    expected = np.array([np.flatnonzero(rng.multinomial(1, P[v], 1)[0])[0] for v in y])
    assert np.array_equal(apply_transition(y, P, seed=11), expected)


def test_apply_transition_speed():
    y = _labels(50_000)
    t = time.perf_counter()
    uniform_noise(y, rate=0.3, num_classes=10, seed=0)
    assert time.perf_counter() - t < 5.0  # ~0.1 s on one core


def test_hybrid_and_rate_zero():
    y = _labels(5000)
    assert np.array_equal(
        hybrid_noise(y, kind="uniform", rate=0.3, num_classes=10, seed=4),
        uniform_noise(y, rate=0.3, num_classes=10, seed=4),
    )
    assert np.array_equal(
        hybrid_noise(y, kind="asymmetric", rate=0.3, num_classes=10, seed=4),
        asymmetric_noise(y, rate=0.3, num_classes=10, seed=4),
    )
    assert np.array_equal(uniform_noise(y, rate=0.0, num_classes=10, seed=4), y)
    assert noise_rate(y, y) == 0.0


# ----------------------------------------------------------------------------------- PMD
@pytest.mark.parametrize("noise_type,factor", [(1, 1.43), (2, 1.2), (3, 1.1)])
def test_pmd_flips_only_to_runner_up(noise_type, factor):
    p = _softmax(5000)
    u, s = _top2(p)
    z = pmd_noise(p, noise_type=noise_type, factor=factor, seed=0)
    assert z.dtype == np.int64
    assert np.all((z == u) | (z == s))
    flipped = z != u
    assert 0 < flipped.mean() < 1
    expect = pmd_flip_probability(p, noise_type, factor).mean()
    assert abs(flipped.mean() - expect) < 0.03


def test_pmd_matches_per_sample_bernoulli():
    """Vectorised draw == one binomial(1, keep_i) per sample; 1 keeps top-1, 0 gives runner-up."""
    p = _softmax(3000, seed=4)
    u, s = _top2(p)
    keep = 1.0 - pmd_flip_probability(p, 2, 1.3)
    rng = np.random.RandomState(9)
    expected = np.array([u[i] if rng.binomial(1, keep[i], 1)[0] else s[i] for i in range(len(p))])
    assert np.array_equal(pmd_noise(p, noise_type=2, factor=1.3, seed=9), expected)


@pytest.mark.parametrize("noise_type", [1, 2, 3])
def test_pmd_flip_probability_shape(noise_type):
    d = np.linspace(0.0, 0.98, 50)
    eta_s = (1.0 - d) / 2  # two classes carry all mass, then a tiny third
    p = np.stack([eta_s + d, eta_s, np.zeros_like(d)], axis=1)
    flip = pmd_flip_probability(p, noise_type, 2.0)
    assert flip.shape == (50,)
    assert np.all(np.diff(flip) <= 1e-12) and flip[0] > flip[-1]  # larger for small margins
    tau = {1: -(d**2) / 2 + 0.5, 2: 1 - d**3, 3: 1 - (d**3 + d**2 + d) / 3}[noise_type]
    level = np.maximum(1 - tau, 0.5) if noise_type == 1 else 1 - tau
    np.testing.assert_allclose(flip, 1 - level / 2.0, atol=1e-12)


def test_pmd_small_margin_flips_more_empirically():
    p = _softmax(N, scale=2.0, seed=1)
    srt = np.sort(p, axis=1)
    d = srt[:, -1] - srt[:, -2]
    u, _ = _top2(p)
    flipped = pmd_noise(p, noise_type=3, factor=1.0, seed=0) != u
    assert flipped[d < np.quantile(d, 0.2)].mean() > flipped[d > np.quantile(d, 0.8)].mean() + 0.2


def test_pmd_labels_do_not_change_result():
    p = _softmax(2000)
    y = _labels(2000)
    assert np.array_equal(
        pmd_noise(p, factor=1.5, seed=3), pmd_noise(p, factor=1.5, seed=3, labels=y)
    )


@pytest.mark.parametrize("noise_type", [1, 2, 3])
@pytest.mark.parametrize("with_labels", [False, True])
def test_calibration_hits_target(noise_type, with_labels):
    p = _softmax(N, scale=10.0, seed=2)  # confident model: a wide range of reachable rates
    u, _ = _top2(p)
    if with_labels:  # clean labels: the model's top-1 for 90 %, random otherwise
        rng = np.random.RandomState(0)
        clean = np.where(rng.rand(N) < 0.9, u, rng.randint(0, 10, N))
    else:
        clean = None
    target = 0.35 if noise_type == 1 else 0.6
    f = calibrate_pmd_factor(p, noise_type=noise_type, target_rate=target, labels=clean)
    assert f > 0
    assert abs(pmd_expected_rate(p, noise_type, f, labels=clean) - target) < 1e-9
    z = pmd_noise(p, noise_type=noise_type, factor=f, seed=1)
    ref = u if clean is None else clean
    assert abs(noise_rate(z, ref) - target) < 0.01


def test_calibration_unreachable():
    p = _softmax(2000)
    with pytest.raises(InputError, match="unreachable"):
        calibrate_pmd_factor(p, noise_type=1, target_rate=0.05)  # below rate at smallest factor
    with pytest.raises(InputError, match="unreachable"):
        calibrate_pmd_factor(p, noise_type=1, target_rate=1.0)  # only as factor -> inf
    with pytest.raises(InputError, match="target_rate"):
        calibrate_pmd_factor(p, noise_type=1, target_rate=1.5)


def test_pmd_factor_too_small():
    p = _softmax(100)
    with pytest.raises(InputError, match="factor"):
        pmd_noise(p, factor=0.4, seed=0)
    with pytest.raises(InputError, match="factor"):
        pmd_noise(p, factor=0.0, seed=0)
    with pytest.raises(InputError, match="factor"):
        pmd_flip_probability(p, 1, -1.0)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_bad_rate(rate):
    with pytest.raises(InputError, match="rate"):
        uniform_noise(_labels(10), rate=rate, num_classes=10, seed=0)
    with pytest.raises(InputError, match="rate"):
        hybrid_noise(_labels(10), kind="asymmetric", rate=rate, num_classes=10, seed=0)


def test_bad_labels():
    y = _labels(10)
    y[3] = 10
    with pytest.raises(InputError, match="sample 3"):
        uniform_noise(y, rate=0.2, num_classes=10, seed=0)
    y[3] = -1
    with pytest.raises(InputError, match="sample 3"):
        asymmetric_noise(y, rate=0.2, num_classes=10, seed=0)
    with pytest.raises(InputError, match="1-D"):
        uniform_noise(np.zeros((2, 3), dtype=int), rate=0.2, num_classes=10, seed=0)
    with pytest.raises(InputError, match="integers"):
        uniform_noise(np.zeros(4), rate=0.2, num_classes=10, seed=0)
    with pytest.raises(InputError, match="sample 1"):
        pmd_noise(_softmax(3), factor=1.5, seed=0, labels=np.array([0, 12, 1]))
    with pytest.raises(InputError, match="1-D"):
        noise_rate(np.zeros((2, 2)), np.zeros((2, 2)))


def test_bad_kind():
    with pytest.raises(InputError, match="uniform, asymmetric"):
        hybrid_noise(_labels(10), kind="pairflip", rate=0.2, num_classes=10, seed=0)
    with pytest.raises(InputError, match="class_map"):
        hybrid_noise(_labels(10), kind="uniform", rate=0.2, num_classes=10, seed=0, class_map={})


def test_bad_probs_and_types():
    with pytest.raises(InputError, match="probs"):
        pmd_noise(np.ones(5) / 5, factor=1.5, seed=0)
    p = _softmax(5)
    p[2] *= 2
    with pytest.raises(InputError, match="row 2"):
        pmd_noise(p, factor=1.5, seed=0)
    q = _softmax(5)
    q[1, 0] = -0.1
    with pytest.raises(InputError, match="sample 1"):
        pmd_flip_probability(q, 1, 1.5)
    with pytest.raises(InputError, match="noise_type"):
        pmd_noise(_softmax(5), noise_type=4, factor=1.5, seed=0)
    with pytest.raises(InputError, match="noise_type"):
        pmd_expected_rate(_softmax(5), 0, 1.5)
    with pytest.raises(InputError, match="seed"):
        uniform_noise(_labels(10), rate=0.2, num_classes=10, seed=-1)


def test_bad_transition_matrix():
    with pytest.raises(InputError, match="square"):
        apply_transition(_labels(10), np.ones((3, 4)) / 4, seed=0)
    P = uniform_transition_matrix(10, 0.2)
    P[4, 4] = 0.5
    with pytest.raises(InputError, match="row 4"):
        apply_transition(_labels(10), P, seed=0)


# ------------------------------------------------------------------------- class map files
def test_load_class_map_json_and_csv(tmp_path):
    j = tmp_path / "map.json"
    j.write_text(json.dumps({"9": 1, "2": 0, "4": 7, "3": 5, "5": 3}))
    assert load_class_map(j, 10) == dict(CIFAR10_ASYMMETRIC_MAP)
    c = tmp_path / "map.csv"
    c.write_text("src,dst\n# cat <-> dog\n3,5\n5, 3\n\n9,1  # truck\n")
    assert load_class_map(c, 10) == {3: 5, 5: 3, 9: 1}
    t = tmp_path / "map.txt"
    t.write_text("0 1\n1\t0\n")
    assert load_class_map(t, 2) == {0: 1, 1: 0}


def test_load_class_map_errors(tmp_path):
    c = tmp_path / "bad.csv"
    c.write_text("3,5\n5,x\n")
    with pytest.raises(InputError, match=r"bad\.csv: line 2"):
        load_class_map(c, 10)
    c.write_text("3,5\n\n5,12\n")
    with pytest.raises(InputError, match=r"bad\.csv: line 3: class id 12 outside \[0, 10\)"):
        load_class_map(c, 10)
    c.write_text("3,5\n3,4\n")
    with pytest.raises(InputError, match="line 2.*twice"):
        load_class_map(c, 10)
    c.write_text("3,5,7\n")
    with pytest.raises(InputError, match="line 1"):
        load_class_map(c, 10)
    j = tmp_path / "bad.json"
    j.write_text('{"3": 5, "4": "dog"}')
    with pytest.raises(InputError, match=r'bad\.json: entry "4"'):
        load_class_map(j, 10)
    j.write_text('{"3": 5, "3": 4}')
    with pytest.raises(InputError, match="twice"):
        load_class_map(j, 10)
    j.write_text('{"3": -1}')
    with pytest.raises(InputError, match=r'entry "3": class id -1 outside'):
        load_class_map(j, 10)
    j.write_text('{"3": 5')
    with pytest.raises(InputError, match="invalid JSON"):
        load_class_map(j, 10)
    j.write_text("[[3, 5]]")
    with pytest.raises(InputError, match="JSON object"):
        load_class_map(j, 10)
    with pytest.raises(InputError, match="not found"):
        load_class_map(tmp_path / "missing.csv", 10)
    (tmp_path / "empty.csv").write_text("# nothing\n")
    with pytest.raises(InputError, match="no entries"):
        load_class_map(tmp_path / "empty.csv", 10)

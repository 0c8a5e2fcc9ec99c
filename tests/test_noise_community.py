"""Bit-exact checks against the community hybrid label files (../shared/data/noise_labels).

``*-1-0.35_U_0.3.npy`` etc. are uniform / asymmetric noise with seed 77 applied on top of the
35 % PMD type-I labels ``*-1-0.35.npy`` (45,000 labels each). Skipped when the shared data is
absent; set SYNREF_SHARED_DIR to the ``shared`` folder to point elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from synref.noise import hybrid_noise, noise_rate


def _noise_dir() -> Path:
    env = os.environ.get("SYNREF_SHARED_DIR")
    shared = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    return shared / "data" / "noise_labels"


NOISE_DIR = _noise_dir()

pytestmark = pytest.mark.skipif(
    not (NOISE_DIR / "cifar10-1-0.35.npy").is_file(),
    reason=f"community noise label files not found in {NOISE_DIR} "
    "(set SYNREF_SHARED_DIR to the shared folder)",
)

CASES = [
    (dataset, num_classes, kind, rate, tag)
    for dataset, num_classes in (("cifar10", 10), ("cifar100", 100))
    for kind, rate, tag in (
        ("uniform", 0.3, "U_0.3"),
        ("uniform", 0.6, "U_0.6"),
        ("asymmetric", 0.3, "A_0.3"),
    )
]


@pytest.mark.parametrize(
    "dataset,num_classes,kind,rate,tag", CASES, ids=[f"{c[0]}_{c[4]}" for c in CASES]
)
def test_hybrid_bit_exact(dataset, num_classes, kind, rate, tag):
    base = np.load(NOISE_DIR / f"{dataset}-1-0.35.npy")
    expected = np.load(NOISE_DIR / f"{dataset}-1-0.35_{tag}.npy")
    assert base.shape == expected.shape == (45_000,)
    got = hybrid_noise(base, kind=kind, rate=rate, num_classes=num_classes, seed=77)
    assert got.dtype == np.int64
    assert np.array_equal(got, expected), (
        f"{(got != expected).sum()} of {len(got)} labels differ from {dataset}-1-0.35_{tag}.npy"
    )
    # sanity: the hybrid moved roughly `rate` of the labels it touches
    assert noise_rate(got, base) > 0.1

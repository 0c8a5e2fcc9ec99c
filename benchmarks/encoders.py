"""Which offline encoder pays for its time: label accuracy after refinement and images/s, per
EfficientNet-Lite variant and input size, on the CIFAR-10 cpu protocol.

    python benchmarks/encoders.py --data CIFAR_PY_DIR [--train-size 10000] [--cache DIR]

For each encoder x size: features of the first ``--train-size`` training images and of the
real-anchor stand-in (100 clean validation images per class, ``recipes.stand_in_anchors``),
cached under ``--cache`` (a re-run only refines); the extraction speed on ``--speed-images``
images (one thread: wall and CPU time; the CPU figure holds even when other jobs share the
machine); then, for each of the
five community noise files (``--noise-dir``), out-of-sample ``pred_probs`` from a 4-fold
cross-fitted linear head and the default refiner. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from synref.evidence import Evidence
from synref.data import load_cifar
from synref.experiments.recipes import stand_in_anchors
from synref.features import create_extractor
from synref.refiners import refine
from synref.train.linear import cross_fit_linear

SETTINGS = {"35% PMD": "cifar10-1-0.35.npy", "70% PMD": "cifar10-1-0.70.npy",
            "35% PMD + 30% U": "cifar10-1-0.35_U_0.3.npy", "35% PMD + 60% U": "cifar10-1-0.35_U_0.6.npy",
            "35% PMD + 30% A": "cifar10-1-0.35_A_0.3.npy"}


def speed(name: str, size: int, images: np.ndarray) -> tuple:
    """(images/s wall, images/s per core by CPU time) of ``name`` at ``size`` px, one thread,
    batches of 64 (weights loaded before the clock starts)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extractor = create_extractor(name, size=size, device="cpu")
        extractor.extract(images[:8], batch_size=8)
        wall, cpu = time.perf_counter(), time.process_time()
        extractor.extract(images, batch_size=64)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        torch.set_num_threads(threads)
    return len(images) / wall, len(images) / cpu


def features(name: str, size: int, images: np.ndarray, path: Path) -> np.ndarray:
    """Features (N, 1280) of ``images``, cached at ``path``."""
    if path.is_file():
        return np.load(path)
    feats = create_extractor(name, size=size, device="cpu").extract(images, batch_size=64)
    np.save(path, feats.astype(np.float32))
    return feats


def cifar_with_stand_in(data: str) -> tuple:
    """(CIFAR-10 training set, indices of the real-anchor stand-in, indices of the clean
    validation images left after it): the cpu protocol's split of images 45,000-49,999."""
    full = load_cifar(data, split="train")
    val_idx = np.arange(45000, 50000)
    anchor_idx = val_idx[stand_in_anchors(full.labels[val_idx], 100, 10)]
    return full, anchor_idx, np.setdiff1d(val_idx, anchor_idx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 python layout (cifar-10-batches-py)")
    parser.add_argument("--noise-dir", default="../shared/data/noise_labels")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--encoders", default="efficientnet-lite0,efficientnet-lite1,efficientnet-lite2")
    parser.add_argument("--sizes", default="160,224")
    parser.add_argument("--cache", default="benchmarks/.cache/encoders")
    parser.add_argument("--speed-images", type=int, default=512, help="images timed per encoder and size")
    parser.add_argument("--speed-only", action="store_true", help="only the images/s columns")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    full, anchor_idx, _ = cifar_with_stand_in(args.data)
    n = args.train_size
    train, truth = full.images[:n], full.labels[:n]
    noisy = {k: np.load(Path(args.noise_dir) / f)[:n].astype(np.int64) for k, f in SETTINGS.items()}
    print(f"| encoder | px | img/s (1 thread, wall) | img/s per core (CPU time) | "
          + " | ".join(SETTINGS) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(SETTINGS))
    for name in args.encoders.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            per_s, per_core = speed(name, size, train[:args.speed_images])
            accs = []
            if not args.speed_only:
                x = features(name, size, train, cache / f"{name}-{size}-{n}-train.npy")
                a = features(name, size, full.images[anchor_idx], cache / f"{name}-{size}-anchors.npy")
                for setting, labels in noisy.items():
                    pred_probs = cross_fit_linear(x, labels, num_classes=10, folds=4, seed=0)
                    evidence = Evidence(labels, 10, full.labels[anchor_idx], features=x, anchor_features=a,
                                        pred_probs=pred_probs)
                    accs.append(f"{np.mean(refine(evidence).refined_labels == truth):.3f}")
            print(f"| {name} | {size} | {per_s:.1f} | {per_core:.1f} | "
                  + " | ".join(accs or ["-"] * len(SETTINGS)) + " |", flush=True)

if __name__ == "__main__":
    main()

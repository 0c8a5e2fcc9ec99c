"""The `posterior` refiner's choices made on the CIFAR-10 clean validation split (never on the
training labels): the weight of same-view ``pred_probs``, the self-training heads' L-BFGS
iterations, the rounds, the neighbour term, the calibration of ``target_precision``.

    python benchmarks/posterior_choices.py --data CIFAR_PY_DIR [--choice pred-probs-weight|head-steps|rounds|neighbors|target-precision] [--precision]

The clean validation split is the 4,000 images 45,000-49,999 left after the real-anchor stand-in
(100 per class, ``recipes.stand_in_anchors``). Their *clean* labels get noise from synref's noise
models (PMD from an out-of-fold linear probe on the clean labels, then uniform / asymmetric);
the evidence is what the cpu protocol builds (frozen encoder features, a 4-fold cross-fitted
linear head on the noisy labels, the stand-in anchors); the refined labels are scored against
the clean validation labels. Features are cached like ``benchmarks/encoders.py``'s. Prints a
markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoders import cifar_with_stand_in, features  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

from synref.evidence import Evidence  # noqa: E402
from synref.noise import NOISE_MODELS, parse_noise_spec  # noqa: E402
from synref.refiners import refine  # noqa: E402
from synref.train.linear import cross_fit_linear  # noqa: E402

SETTINGS = ["pmd-0.35", "pmd-0.7", "pmd-0.35+u-0.6", "pmd-0.35+a-0.3", "pmd-0.35+u-0.3", "u-0.1", "u-0.05"]
CHOICES: Dict[str, List[Dict[str, float]]] = {
    "pred-probs-weight": [{"pred_probs_weight": w} for w in (0.0, 0.5, 1.0)],
    "head-steps": [{"head_steps": s} for s in (60, 20)],
    "rounds": [{"self_training_rounds": r} for r in (2, 4, 6, 8)],
    "neighbors": [{"neighbors": k, "neighbor_weight": w} for k, w in ((10, 1.0), (10, 2.0), (10, 3.0), (20, 1.0), (20, 2.0))],
    "target-precision": [{"target_precision": p, "calibrate_precision": c}
                         for p in (0.85, 0.9) for c in (False, True)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 python layout (cifar-10-batches-py)")
    parser.add_argument("--choice", choices=sorted(CHOICES), default="pred-probs-weight")
    parser.add_argument("--encoder", default="efficientnet-lite2")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seeds", default="0,1", help="noise seeds")
    parser.add_argument("--limit", type=int, default=None, help="first N validation images only (smoke runs)")
    parser.add_argument("--cache", default="benchmarks/.cache/encoders")
    parser.add_argument("--precision", action="store_true",
                        help="cells 'label accuracy / precision of the changes' (default: label accuracy)")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    full, anchor_idx, held = cifar_with_stand_in(args.data)
    held = held[:args.limit]
    tag = f"{args.encoder}-{args.size}"
    x = features(args.encoder, args.size, full.images[held], cache / f"{tag}-val{len(held)}.npy")
    a = features(args.encoder, args.size, full.images[anchor_idx], cache / f"{tag}-anchors.npy")
    y, anchor_labels = full.labels[held].astype(np.int64), full.labels[anchor_idx].astype(np.int64)
    clean_probs = cross_fit_linear(x, y, num_classes=10, folds=4, seed=0)  # the "clean-label model" of PMD
    variants = CHOICES[args.choice]
    names = [", ".join(f"{k}={v:g}" for k, v in opts.items()) for opts in variants]
    print(f"clean validation split: {len(held)} images, {tag}; refined label accuracy (seeds {args.seeds})")
    print("| noise | given | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(variants))
    means = np.zeros(len(variants))
    for setting in SETTINGS:
        given_cells, cells = [], [[] for _ in variants]
        for seed in (int(s) for s in args.seeds.split(",")):
            noisy = y.copy()
            for kind, rate in parse_noise_spec(setting):
                noisy, _ = NOISE_MODELS.get(kind)(noisy, rate, num_classes=10, seed=seed, probs=clean_probs)
            pred_probs = cross_fit_linear(x, noisy, num_classes=10, folds=4, seed=0)
            evidence = Evidence(noisy, 10, anchor_labels, features=x, anchor_features=a, pred_probs=pred_probs,
                                pred_probs_view="same")
            given_cells.append(f"{np.mean(noisy == y):.3f}")
            for i, opts in enumerate(variants):
                refined = refine(evidence, "posterior", **opts).refined_labels
                acc = float(np.mean(refined == y))
                changed = refined != noisy
                cells[i].append(f"{acc:.3f}" + (f" ({np.mean(refined[changed] == y[changed]):.3f})"
                                                if args.precision else ""))
                means[i] += acc
        print(f"| {setting} | {' / '.join(given_cells)} | " + " | ".join(" / ".join(c) for c in cells) + " |",
              flush=True)
    count = len(SETTINGS) * len(args.seeds.split(","))
    print("| mean | | " + " | ".join(f"{m / count:.4f}" for m in means) + " |")


if __name__ == "__main__":
    main()

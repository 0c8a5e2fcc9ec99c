"""The default refiner's full-size path against its scaled path: refined label accuracy.

Takes a feature matrix with its true labels (e.g. ``synref features`` of the first 10,000
CIFAR-10 training images), holds ``--anchors-per-class`` rows per class out as stand-in anchors,
applies each noise setting with synref's noise models (seed 0) to the rest, and refines twice with
the posterior option ``--option`` set to each of its two ``--values``: by default the exact
against the approximate neighbour graph (``neighbor_graph`` ``exact,hnsw``), or e.g. the
self-training heads on the full rows against their principal-component projection
(``--option head_dims --values 0,256``); prints a markdown table (given / first / second label
accuracy, labels that differ, model-check verdicts, the graph's recall@10, seconds).

    python benchmarks/graph_equivalence.py --features F.npy --labels Y.npy \\
        --noise pmd-0.35,pmd-0.7,pmd-0.35+u-0.3,pmd-0.35+u-0.6,pmd-0.35+a-0.3,u-0.1
    python benchmarks/graph_equivalence.py --features F.npy --labels Y.npy --option head_dims --values 0,256
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from synref.evidence import Evidence
from synref.noise import NOISE_MODELS, parse_noise_spec
from synref.refiners import refine
from synref.train.linear import cross_fit_linear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="(N, D) .npy")
    parser.add_argument("--labels", required=True, help="(N,) .npy true labels")
    parser.add_argument("--noise", default="pmd-0.35,pmd-0.7,pmd-0.35+u-0.3,pmd-0.35+u-0.6,pmd-0.35+a-0.3,u-0.1")
    parser.add_argument("--anchors-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", default="neighbor_graph", help="the posterior option compared")
    parser.add_argument("--values", default="exact,hnsw", help="its two values (numbers are read as int)")
    args = parser.parse_args()
    x = np.load(args.features, mmap_mode="r")
    y = np.load(args.labels).astype(np.int64)
    c = int(y.max()) + 1
    rng = np.random.default_rng(args.seed)
    anchors = np.concatenate([rng.choice(np.flatnonzero(y == k), args.anchors_per_class, replace=False)
                              for k in range(c)])
    real = np.setdiff1d(np.arange(len(y)), anchors)
    features, truth = np.asarray(x[real]), y[real]
    clean_probs = cross_fit_linear(features, truth, num_classes=c, folds=4, seed=args.seed)  # for PMD noise
    print(f"{len(real)} rows, {len(anchors)} stand-in anchors, D={x.shape[1]}, C={c}")
    names = args.values.split(",")
    if len(names) != 2:
        parser.error("--values: two values, comma-separated")
    values = [int(v) if v.lstrip("-").isdigit() else v for v in names]
    first, second = (f"{args.option}={v}" for v in names)
    print(f"| noise | given | {first} | {second} | labels differ | model check | recall@10 | seconds |")
    print("|---|---:|---:|---:|---:|---|---:|---|")
    for setting in args.noise.split(","):
        noisy = truth.copy()
        for kind, rate in parse_noise_spec(setting):
            noisy, _ = NOISE_MODELS.get(kind)(noisy, rate, num_classes=c, seed=args.seed, probs=clean_probs)
        evidence = Evidence(noisy, c, y[anchors], features=features, anchor_features=np.asarray(x[anchors]))
        t0 = time.perf_counter()
        exact = refine(evidence, "posterior", **{args.option: values[0]})
        t1 = time.perf_counter()
        approx = refine(evidence, "posterior", **{args.option: values[1]})
        t2 = time.perf_counter()
        acc = lambda r: float(np.mean(r.refined_labels == truth))  # noqa: E731
        recall = lambda r: r.info["neighbor_graph"].get("recall", "exact")  # noqa: E731
        print(f"| {setting} | {np.mean(noisy == truth):.4f} | {acc(exact):.4f} | {acc(approx):.4f} | "
              f"{int(np.sum(exact.refined_labels != approx.refined_labels))} | {exact.decision.model_check} / "
              f"{approx.decision.model_check} | {recall(exact)} / {recall(approx)} | "
              f"{t1 - t0:.0f} / {t2 - t1:.0f} |", flush=True)


if __name__ == "__main__":
    main()

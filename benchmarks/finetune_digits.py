"""``synref refine --evidence finetune`` on scikit-learn's digits: the choice table (on a clean
validation split) and frozen vs finetune label accuracy (on the disjoint rest), each a real
``synref refine`` run (a subprocess, timed).

    python benchmarks/finetune_digits.py sets --root R          # image files, manifests, noisy labels
    python benchmarks/finetune_digits.py run --root R --part choice --setting pmd-0.7 --name A -- --evidence finetune ...
    python benchmarks/finetune_digits.py table --root R         # every finished run as a markdown table

The digits are split as ``synref demo`` splits them (stratified, seed 0, 65 / 10 / 25 %): the
*choice* part is the 10 % + 25 % (629 images; its clean labels judge the choices) and the
*report* part the 65 % (1,168 images; frozen vs finetune with the chosen options, nothing chosen
on it). Each part is written as 8x8 PNG files with one CSV manifest per noise setting (noise
drawn on that part by synref's noise models, seed 0: PMD from a small CNN trained on the part's
clean labels, as ``synref demo`` draws it); ``full-<setting>.npy`` are the same for all 1,797
images (``synref refine --data digits --labels``). Anchors: ``--generate`` glyphs, 100 per
class (the default). Label accuracy is read from ``refined_labels.csv`` against the clean labels;
the held-out anchor NLL (mean over folds at the chosen epochs) from ``summary.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from synref.data import load_digits_dataset
from synref.experiments.recipes import digits_split, inject_noise
from synref.noise import parse_noise_spec

SETTINGS = ["pmd-0.7", "u-0.2", "pmd-0.35", "u-0.09"]


def _noisy(images: np.ndarray, labels: np.ndarray, setting: str) -> np.ndarray:
    noisy, _ = inject_noise(images, labels, parse_noise_spec(setting), num_classes=10, seed=0)
    return noisy


def make_sets(root: Path) -> None:
    digits = load_digits_dataset()
    train, val, test = digits_split(digits.labels, val_fraction=0.10, test_fraction=0.25, seed=0)
    parts = {"choice": np.sort(np.concatenate([val, test])), "report": np.sort(train)}
    from PIL import Image

    for part, rows in parts.items():
        folder = root / part
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for i in rows:
            path = folder / "images" / f"{i:04d}.png"
            if not path.is_file():
                Image.fromarray(digits.images[i, :, :, 0]).save(path)
        np.save(folder / "truth.npy", digits.labels[rows])
        for setting in SETTINGS:
            noisy = _noisy(digits.images[rows], digits.labels[rows], setting)
            with open(folder / f"{setting}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "label"])
                writer.writerows([f"images/{i:04d}.png", int(y)] for i, y in zip(rows, noisy))
            print(part, setting, "labels wrong", round(float(np.mean(noisy != digits.labels[rows])), 3))
    for setting in SETTINGS:
        noisy = _noisy(digits.images, digits.labels, setting)
        np.save(root / f"full-{setting}.npy", noisy)
        print("full", setting, "labels wrong", round(float(np.mean(noisy != digits.labels)), 3))


def run(root: Path, part: str, setting: str, name: str, extra: List[str]) -> Dict[str, object]:
    """One ``synref refine`` run (nice'd, one thread); its row in ``root/runs.jsonl``."""
    out = root / "runs" / f"{part}-{setting}-{name}"
    if part == "full":
        data = ["--data", "digits", "--labels", str(root / f"full-{setting}.npy")]
        truth = load_digits_dataset().labels
    else:
        data = ["--data", str(root / part / f"{setting}.csv")]
        truth = np.load(root / part / "truth.npy")
    cmd = ["nice", "-n", "19", sys.executable, "-m", "synref", "refine", *data, "--generate", "--quiet",
           "--out", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", SYNREF_NO_PROGRESS="1")
    started = time.time()
    # run from root: "--data digits" must not meet a ./digits folder
    subprocess.run(cmd, check=True, env=env, cwd=root)
    wall = time.time() - started
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "refined_labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    given = np.array([int(r["given_label"]) for r in rows])
    refined = np.array([int(r["suggested_label"]) for r in rows])
    tuned = (summary.get("evidence") or {}).get("finetune")
    row = {"part": part, "setting": setting, "name": name, "args": " ".join(extra),
           "given_acc": float(np.mean(given == truth)), "label_acc": float(np.mean(refined == truth)),
           "decided_by": summary["decision"].get("decided_by"), "wall_s": round(wall, 1),
           "finetune_s": None if tuned is None else tuned["seconds"],
           "best_epochs": None if tuned is None else [f["best_epoch"] for f in tuned["per_fold"]],
           "anchor_nll": None if tuned is None else float(np.mean(
               [f["epochs"][f["best_epoch"]]["anchor_nll"] for f in tuned["per_fold"]])),
           "anchor_acc": None if tuned is None else float(np.mean(
               [f["epochs"][f["best_epoch"]]["anchor_acc"] for f in tuned["per_fold"]]))}
    with open(root / "runs.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return row


def _frozen(root: Path, part: str, setting: str, name: str = "frozen") -> Dict[str, Any]:
    """A finished run's data, anchors, frozen features (from its cache), clean labels and the
    soft targets its frozen pass gave (what ``--evidence finetune`` trains on)."""
    from synref.apps.refine_run import RefineRunConfig, load_anchors, load_data
    from synref.pipeline import encode

    out = root / "runs" / f"{part}-{setting}-{name}"
    config = RefineRunConfig.load(out / "config.json")
    dataset = load_data(config)
    anchors, _ = load_anchors(out / "anchors", dataset, decode=not dataset.is_path_backed)
    encoded = encode(config.evidence, dataset, anchors, out / "cache", batch_size=config.batch_size,
                     workers=config.workers, chunk_size=config.chunk_size)
    space = {"features": encoded.features, "anchor_features": encoded.anchor_features}
    truth = load_digits_dataset().labels if part == "full" else np.load(root / part / "truth.npy")
    return {"out": out, "config": config, "dataset": dataset, "anchors": anchors, "space": space, "truth": truth}


def _judge(frozen: Dict[str, Any], probs: np.ndarray, feats: Optional[np.ndarray] = None,
           fold_of: Optional[np.ndarray] = None, anchor_feats: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Label accuracy (against the clean labels of the choice part) of the ways to read fine-tuned
    out-of-fold ``probs`` (and, when given, the per-fold fine-tuned features)."""
    import dataclasses

    from synref.evidence import Evidence
    from synref.refiners import create_refiner, refine
    from synref.refiners.confident import confident_learning_correction

    dataset, anchors, space, truth = (frozen[k] for k in ("dataset", "anchors", "space", "truth"))
    labels, c, seed = dataset.labels, dataset.num_classes, frozen["config"].seed
    refiner = create_refiner("posterior", seed=seed)

    def acc(refined: np.ndarray) -> float:
        return round(float(np.mean(refined == truth)), 4)

    rows = {"given": acc(labels), "argmax": acc(probs.argmax(axis=1)),
            # no truth: how often the out-of-fold argmax agrees with the given labels
            "argmax agrees with given": round(float(np.mean(probs.argmax(axis=1) == labels)), 4)}
    _, flagged = confident_learning_correction(labels, probs, filter_by="both")
    rows["confident learning"] = acc(np.where(flagged, probs.argmax(axis=1), labels))
    frozen_summary = json.loads((frozen["out"] / "summary.json").read_text())
    if frozen_summary["decision"].get("decided_by") == "confident-learning":  # scores.npy: the linear heads' softmax
        mean = 0.5 * (probs + np.load(frozen["out"] / "scores.npy"))
        _, flagged = confident_learning_correction(labels, mean, filter_by="both")
        rows["confident learning on the mean with the frozen heads' softmax"] = acc(
            np.where(flagged, mean.argmax(axis=1), labels))
    for weight in (1.0, 3.0):
        evidence = Evidence(labels, c, anchors.labels, features=space["features"],
                            anchor_features=space["anchor_features"], pred_probs=probs, seed=seed,
                            pred_probs_view="separate")
        result = refine(evidence, type(refiner)(dataclasses.replace(refiner.options, pred_probs_weight=weight)))
        rows[f"separate view w{weight:g} ({result.decision.decided_by})"] = acc(result.refined_labels)
    if feats is not None:
        evidence = Evidence(labels, c, anchors.labels, features=feats, anchor_features=anchor_feats,
                            pred_probs=probs, fold_ids=fold_of, seed=seed, pred_probs_view="same")
        result = refine(evidence, refiner)
        rows[f"fine-tuned space ({result.decision.decided_by})"] = acc(result.refined_labels)
    return rows


def variants(root: Path, part: str, setting: str, name: str) -> None:
    """How the fine-tuned evidence of a finished ``--evidence finetune`` run is best read (no
    training: the run's kept result); a row of ``root/variants.jsonl``."""
    frozen = _frozen(root, part, setting, name)
    (kept,) = list((frozen["out"] / "cache").glob("finetune-*.npz"))
    with np.load(kept) as saved:
        rows = _judge(frozen, saved["pred_probs"], saved["features"], saved["fold_of"], saved["anchor_features"])
    with open(root / "variants.jsonl", "a") as handle:
        handle.write(json.dumps({"part": part, "setting": setting, "name": name, "label_acc": rows}) + "\n")
    print(json.dumps(rows))


def choose(root: Path, setting: str, options: Dict[str, Any]) -> None:
    """One fine-tuning configuration on the choice part (in-process, the frozen run's targets,
    anchors and features): held-out anchor NLL / accuracy and :func:`_judge`'s label accuracies;
    a row of ``root/choices.jsonl``."""
    from synref.data import decode_images
    from synref.train.finetune import FinetuneConfig, crossfit_finetune

    frozen = _frozen(root, "choice", setting)
    summary = json.loads((frozen["out"] / "summary.json").read_text())
    scores = np.load(frozen["out"] / "scores.npy")
    targets = scores / scores.sum(axis=1, keepdims=True)  # the frozen pass decided (posterior or its fallback)
    assert summary["decision"]["decided_by"] in ("posterior", "confident-learning"), summary["decision"]
    options = dict(options)
    given = np.eye(frozen["dataset"].num_classes, dtype=np.float32)[frozen["dataset"].labels]
    with open(frozen["out"] / "refined_labels.csv", newline="") as handle:
        refined = np.array([int(r["suggested_label"]) for r in csv.DictReader(handle)])
    refined = np.eye(frozen["dataset"].num_classes, dtype=np.float32)[refined]
    # frozen (what --evidence finetune does), given, mix (half each), refined (the frozen pass's labels)
    source = options.pop("targets", "frozen")
    targets = {"frozen": targets, "given": given, "mix": 0.5 * (targets + given), "refined": refined,
               "refined-mix": 0.5 * (targets + refined)}[source]
    config = FinetuneConfig(**options)
    size = (config.image_size, config.image_size)
    images = decode_images(frozen["dataset"], size=size, channels=3)[0].images
    anchor_images = decode_images(frozen["anchors"], size=size, channels=3)[0].images
    started = time.time()
    tuned = crossfit_finetune(images, targets, anchor_images, frozen["anchors"].labels,
                              num_classes=frozen["dataset"].num_classes, config=config)
    seconds = time.time() - started
    kept = root / "choices" / f"{setting}-{'-'.join(f'{k}={v}' for k, v in sorted(options.items()))}-{source}.npz"
    kept.parent.mkdir(exist_ok=True)
    np.savez(kept, pred_probs=tuned.pred_probs, features=tuned.features, fold_of=tuned.fold_of,
             anchor_features=tuned.anchor_features)
    best = [h["epochs"][h["best_epoch"]] for h in tuned.histories]
    row = {"setting": setting, "options": {**options, "targets": source}, "seconds": round(seconds, 1),
           "best_epochs": [h["best_epoch"] for h in tuned.histories],
           "anchor_nll": round(float(np.mean([b["anchor_nll"] for b in best])), 4),
           "anchor_acc": round(float(np.mean([b["anchor_acc"] for b in best])), 4),
           "label_acc": _judge(frozen, tuned.pred_probs, tuned.features, tuned.fold_of, tuned.anchor_features)}
    with open(root / "choices.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row))


def table(root: Path) -> None:
    rows = [json.loads(line) for line in open(root / "runs.jsonl")]
    print("| part | setting | run | options | given | refined | decided by | best epochs | held-out anchor NLL "
          "| fine-tune s | wall s |")
    print("|---|---|---|---|---:|---:|---|---|---:|---:|---:|")
    for r in rows:
        nll = "" if r["anchor_nll"] is None else f"{r['anchor_nll']:.3f}"
        print(f"| {r['part']} | {r['setting']} | {r['name']} | `{r['args']}` | {r['given_acc']:.3f} | "
              f"{r['label_acc']:.3f} | {r['decided_by']} | {r['best_epochs'] or ''} | {nll} | "
              f"{r['finetune_s'] or ''} | {r['wall_s']} |")


def choice_table(root: Path) -> None:
    """Every ``choose`` row of ``root/choices.jsonl`` as a markdown table (held-out anchors first:
    they choose; the label accuracies on the choice part's clean labels check the choice)."""
    rows = [json.loads(line) for line in open(root / "choices.jsonl")]
    print("| setting | size | epochs | lr | anchor weight | targets | held-out anchor NLL | anchor acc | best epochs "
          "| argmax | confident learning | CL on the mean with the frozen heads | seconds |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        o, acc = r["options"], r["label_acc"]
        mean = acc.get("confident learning on the mean with the frozen heads' softmax")
        print(f"| {r['setting']} | {o.get('image_size')} | {o.get('epochs')} | {o.get('lr'):g} | "
              f"{o.get('anchor_weight', 1.0):g} | {o.get('targets', 'frozen')} | {r['anchor_nll']:.4f} | "
              f"{r['anchor_acc']:.3f} | {r['best_epochs']} | {acc['argmax']:.3f} | {acc['confident learning']:.3f} | "
              f"{'' if mean is None else f'{mean:.3f}'} | {r['seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("sets", "run", "variants", "choose", "table", "choices"))
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--part", choices=("choice", "report", "full"), default="choice")
    parser.add_argument("--setting", choices=SETTINGS, default="pmd-0.7")
    parser.add_argument("--name", default="frozen")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]  # after --: the synref refine options of this run
    args.root.mkdir(parents=True, exist_ok=True)
    if args.command == "sets":
        make_sets(args.root.resolve())
    elif args.command == "run":
        run(args.root.resolve(), args.part, args.setting, args.name, args.extra)
    elif args.command == "variants":
        variants(args.root.resolve(), args.part, args.setting, args.name)
    elif args.command == "choose":  # after --: FinetuneConfig fields as key=value
        options = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.extra)}
        choose(args.root.resolve(), args.setting, options)
    elif args.command == "choices":
        choice_table(args.root)
    else:
        table(args.root)


if __name__ == "__main__":
    main()

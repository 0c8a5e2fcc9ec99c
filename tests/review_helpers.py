"""Results folders for the review / apply tests, written as ``synref refine --out`` writes them."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

CLASSES = ["cat", "dog <b>", "a&b"]
COLUMNS = ("index,id,path,given_label,given_class,suggested_label,suggested_class,best_score,"
           "given_score,label_quality,changed").split(",")
def consistent_scores(n: int, c: int, seed: int = 0, threshold: float = 0.6):
    """(scores (n, c) float32, given (n,), suggested (n,)): the suggestion is the best class when
    its score reaches ``threshold`` and it is not the given one; the other rows whose best class
    is not the given one are the flagged ones."""
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.full(c, 0.6), size=n).astype(np.float32)
    given = rng.integers(0, c, n)
    best = scores.argmax(1)
    suggested = np.where((best != given) & (scores.max(1) >= threshold), best, given)
    return scores, given, suggested


def write_results(out: Path, *, given: np.ndarray, suggested: np.ndarray, scores: Optional[np.ndarray],
                  paths: Sequence[str], ids: Optional[Sequence[str]] = None, class_names: Sequence[str] = CLASSES,
                  anchors: Optional[Path] = None, data: str = "data", extra: Optional[Dict[str, Any]] = None) -> None:
    """refined_labels.csv (best / given score from ``scores``, or 0.9 / 0.1 without), scores.npy,
    summary.json."""
    out.mkdir(parents=True, exist_ok=True)
    n, c = len(given), len(class_names)
    rows = np.arange(n)
    best = scores.max(1) if scores is not None else np.where(given != suggested, 0.9, 0.5)
    gscore = scores[rows, given] if scores is not None else np.where(given != suggested, 0.1, 0.5)
    with open(out / "refined_labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i in range(n):
            writer.writerow([i, ids[i] if ids is not None else f"img-{i}", paths[i], int(given[i]),
                             class_names[given[i]], int(suggested[i]), class_names[suggested[i]], f"{best[i]:.6f}",
                             f"{gscore[i]:.6f}", f"{gscore[i] / max(best[i], 1e-12):.6f}",
                             "yes" if given[i] != suggested[i] else "no"])
    if scores is not None:
        np.save(out / "scores.npy", scores)
    summary = {"data": data, "split": "train", "num_samples": n, "num_classes": c, "class_names": list(class_names),
               "path_backed": True, "anchors": {"dir": str(anchors) if anchors else ""}, "threshold": 0.6,
               "refiner": "posterior", "num_changed": int((given != suggested).sum()), "synref_version": "test"}
    summary.update(extra or {})
    (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def glyph_anchors(folder: Path, class_names: Sequence[str] = CLASSES, per_class: int = 6) -> Path:
    """A small glyph anchor set (the first letter of each class)."""
    from synref.anchors import create_generator, generate_anchor_set

    if not folder.exists():
        texts = {name: name[0].upper() for name in class_names}
        generate_anchor_set(create_generator("glyph", size=16, texts=texts), list(class_names), per_class, folder)
    return folder


def image_folder_results(root: Path, n: int = 60, seed: int = 0) -> Dict[str, Any]:
    """``root/data/<i>.png`` images, ``root/anchors``, and ``root/OUT``: a results folder with
    changed and flagged rows (consistent scores)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths: List[str] = []
    for i in range(n):
        path = data / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    scores, given, suggested = consistent_scores(n, len(CLASSES), seed)
    anchors = glyph_anchors(root / "anchors")
    write_results(root / "OUT", given=given, suggested=suggested, scores=scores, paths=paths, anchors=anchors,
                  data=str(data))
    return {"out": root / "OUT", "data": data, "paths": paths, "scores": scores, "given": given,
            "suggested": suggested, "anchors": anchors}


def large_results(out: Path, n: int, num_classes: int = 100, seed: int = 0) -> Dict[str, Any]:
    """A results folder of ``n`` rows, every one changed (a review item), ``num_classes`` classes,
    paths that do not exist (the thumbnails come from :func:`synthetic_image`)."""
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.full(num_classes, 0.3), size=n).astype(np.float32)
    best = scores.argmax(1)
    given = (best + 1 + rng.integers(0, num_classes - 1, n)) % num_classes
    names = [f"class {k} <{k % 7}>" for k in range(num_classes)]
    paths = [f"/nowhere/photos/{names[g].split()[1]}/img_{i:06d}.jpg" for i, g in enumerate(given)]
    write_results(out, given=given, suggested=best, scores=scores, paths=paths, class_names=names,
                  data="/nowhere/photos")
    return {"given": given, "suggested": best, "scores": scores, "names": names}


def synthetic_image(index: int) -> np.ndarray:
    """A small smooth 24x24 RGB image (a colour gradient and a square), different per index: about
    what a photo thumbnail costs as JPEG."""
    rng = np.random.default_rng(index)
    base = rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, 24)[:, None, None] * rng.integers(-120, 120, 3)
    img = np.clip(base + ramp + np.zeros((24, 24, 3)), 0, 255)
    x, y = rng.integers(0, 14, 2)
    img[y:y + 10, x:x + 10] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)

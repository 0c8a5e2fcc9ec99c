"""Results of an experiment: one JSON file per finished cell, ``results.csv`` and the paper-layout
``results.md`` rebuilt from them."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..io import csv_text, write_text
from .methods import BASE_METHODS, create_method, method_base, method_title, parse_methods
from .recipes import NOISE_SETTINGS

__all__ = ["RESULT_COLUMNS", "PUBLISHED_CIFAR10", "cell_name", "safe_name", "read_cells", "write_results", "format_results_md",
           "write_all"]

RESULT_COLUMNS: Tuple[str, ...] = ("dataset", "protocol", "method", "noise", "seed", "test_acc", "label_acc",
                                   "seconds", "noise_rate", "val_acc", "best_epoch", "refine_seconds", "anchors",
                                   "evidence_seconds")
#: the paper's CIFAR-10 test accuracies (%) (../docs/method.md section 5), for the gain column.
PUBLISHED_CIFAR10: Dict[str, Tuple[float, ...]] = {
    "standard": (80.81, 40.32, 77.12, 67.92, 77.40),
    "ours": (82.46, 54.10, 79.76, 72.38, 78.97),
    "plc": (82.87, 38.65, 77.98, 61.87, 78.52),
    "plc+ours": (83.26, 54.01, 81.38, 72.57, 80.49),
    "lra-simclr": (89.29, 40.87, 88.83, 83.67, 86.89),
    "lra-simclr+ours": (88.87, 60.78, 88.41, 85.31, 87.95),
    "lra-clip": (96.91, 41.78, 96.61, 88.66, 94.35),
    "lra-clip+ours": (96.93, 71.59, 96.68, 94.94, 96.78),
}


def safe_name(text: str) -> str:
    """``text`` as one file-name part: letters, digits, ``-`` and ``.`` kept, anything else ``_``
    (a method, a noise setting, an encoder name such as ``hf:/models/dinov2``)."""
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text)


def cell_name(dataset: str, protocol: str, method: str, noise: str, seed: int) -> str:
    return f"{dataset}__{protocol}__{safe_name(method)}__{safe_name(noise)}__seed{seed}"


def read_cells(out: Path) -> List[Dict[str, Any]]:
    """Every finished cell of ``out`` (rows with :data:`RESULT_COLUMNS`)."""
    rows = []
    for path in sorted((Path(out) / "cells").glob("*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable cell result ({exc}); delete it to recompute the cell") from None
    return rows


def write_results(out: Path, rows: Sequence[Dict[str, Any]], notes: Dict[Tuple[str, str], Dict[str, Any]]) -> None:
    """``out/results.csv`` (one row per cell) and ``out/results.md`` (one table per dataset + protocol)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    order = {m: i for i, m in enumerate(BASE_METHODS)}
    for row in sorted(rows, key=lambda r: (r["dataset"], r["protocol"], r["noise"], order.get(r["method"], 9),
                                           r["method"], r["seed"])):
        writer.writerow({k: ("" if row.get(k) is None else csv_text(row[k]) if isinstance(row.get(k), str) else row[k])
                         for k in RESULT_COLUMNS})
    write_text(out / "results.csv", buf.getvalue())
    parts = []
    for key in sorted({(r["dataset"], r["protocol"]) for r in rows}):
        parts.append(format_results_md([r for r in rows if (r["dataset"], r["protocol"]) == key],
                                       notes.get(key, {})))
    write_text(out / "results.md", "\n\n".join(parts) + "\n")


def _noise_title(setting: str) -> str:
    if setting.startswith("file:"):
        return setting[5:]
    if setting == "given":
        return "given labels"
    names = {"pmd": "PMD", "u": "U", "a": "A"}
    parts = []
    for part in setting.split("+"):
        kind, _, rate = part.partition("-")
        parts.append(f"{float(rate) * 100:g}% {names.get(kind, kind)}")
    return " + ".join(parts)


def _seconds(values: Sequence[float]) -> str:
    """Mean wall time: whole seconds from 10 s, else two significant digits (a correction takes
    milliseconds: never shown as 0)."""
    if not values:
        return "-"
    mean = float(np.mean(values))
    return f"{mean:.0f}" if mean >= 10 else f"{mean:.2g}"


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = 100 * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * float(np.std(values, ddof=1)):.2f}"


def format_results_md(rows: Sequence[Dict[str, Any]], note: Dict[str, Any]) -> str:
    """One paper-layout table (methods x noise settings, test accuracy %, mean ± std over seeds;
    a "+ Ours" cell adds its gain over its base row) plus label accuracies and wall times."""
    dataset, protocol = rows[0]["dataset"], rows[0]["protocol"]
    noises = [n for n in NOISE_SETTINGS if any(r["noise"] == n for r in rows)]
    noises += sorted({r["noise"] for r in rows} - set(noises))
    present = {r["method"] for r in rows}
    encoders = sorted({(method_base(m) or m)[4:] for m in present if m.startswith("lra-")},
                      key=lambda e: (["simclr", "clip"].index(e) if e in ("simclr", "clip") else 2, e))
    methods = parse_methods(",".join(sorted(present)), encoders)
    seeds = sorted({int(r["seed"]) for r in rows})

    def values(method: str, noise: str, key: str = "test_acc") -> Dict[int, float]:
        return {int(r["seed"]): float(r[key]) for r in rows
                if r["method"] == method and r["noise"] == noise and r.get(key) not in (None, "")}

    kinds = {m: create_method(m).kind for m in methods}
    trained = [m for m in methods if any(values(m, n) for n in noises)]
    lines = [f"## {dataset}, protocol `{protocol}`", ""]
    if any(kinds[m] == "train" for m in trained):
        lines.append(f"Test accuracy (%) of the best clean-validation epoch; mean ± std over seeds "
                     f"{', '.join(map(str, seeds))}; a \"+ Ours\" cell gives (in brackets) its gain over the row it "
                     f"refines.")
    elif trained:
        lines.append(f"Test accuracy (%) of a linear probe trained on each method's corrected labels (the clean "
                     f"test split); mean ± std over seeds {', '.join(map(str, seeds))}.")
    else:
        lines.append(f"Seeds {', '.join(map(str, seeds))}.")
    for key in ("anchors", "data", "evidence", "refinement", "encoders"):
        if note.get(key):
            lines.append(f"- {key}: {note[key]}")
    if not trained:
        lines += ["", "No test accuracies: these rows correct labels only (no clean test split to probe them on)."]
    lines += ["", "| Method | " + " | ".join(_noise_title(n) for n in noises) + " |",
              "|---|" + "---:|" * len(noises)] if trained else []
    for method in trained:
        cells = []
        for noise in noises:
            v = values(method, noise)
            text = _mean_std(list(v.values()))
            base = method_base(method)
            if base and v:
                b = values(base, noise)
                common = sorted(set(v) & set(b))
                if common:
                    gain = 100 * float(np.mean([v[s] - b[s] for s in common]))
                    text += f" ({gain:+.2f})"
            cells.append(text)
        lines.append(f"| {method_title(method)} | " + " | ".join(cells) + " |")

    if dataset == "cifar10" and any(m in PUBLISHED_CIFAR10 for m in methods):
        lines += ["", "Published gains of \"+ Ours\" (ResNet-34, CIFAR-10, paper protocol), for comparison:", "",
                  "| Method | " + " | ".join(_noise_title(n) for n in noises) + " |",
                  "|---|" + "---:|" * len(noises)]
        for method in methods:
            base = method_base(method)
            if not base or method not in PUBLISHED_CIFAR10:
                continue
            cells = []
            for noise in noises:
                if noise in NOISE_SETTINGS:
                    i = NOISE_SETTINGS.index(noise)
                    cells.append(f"{PUBLISHED_CIFAR10[method][i] - PUBLISHED_CIFAR10[base][i]:+.2f}")
                else:
                    cells.append("-")
            lines.append(f"| {method_title(method)} | " + " | ".join(cells) + " |")

    lines += ["", "Accuracy (%) of the training labels each method starts from (vs the clean labels):", "",
              "| Labels | " + " | ".join(_noise_title(n) for n in noises) + " |", "|---|" + "---:|" * len(noises)]
    for title, method in (("noisy (given)", "standard"), ("refined (ours)", "ours")):
        if method == "standard" and "standard" not in present and "given" in present:
            method = "given"
        src = method if method in present else next((m for m in methods if (method_base(m) is None) ==
                                                     (method == "standard")), None)
        if src is None:
            continue
        lines.append(f"| {title} | " + " | ".join(_mean_std(list(values(src, n, "label_acc").values()))
                                                  for n in noises) + " |")

    corrections = [m for m in methods if any(r["method"] == m and r.get("label_acc_after_correction") is not None
                                             for r in rows)]
    if corrections:
        lines += ["", "Label correction: accuracy (%) of the labels after correction vs the clean ones; in brackets "
                      "the precision / recall of the flagged samples (flagged = label changed or marked wrong):", "",
                  "| Method | " + " | ".join(_noise_title(n) for n in noises) + " |", "|---|" + "---:|" * len(noises)]
        for method in corrections:
            cells = []
            for noise in noises:
                acc = values(method, noise, "label_acc_after_correction")
                prec = values(method, noise, "flagged_precision")
                rec = values(method, noise, "flagged_recall")
                cells.append(_mean_std(list(acc.values())) + (
                    f" ({np.mean(list(prec.values())):.2f} / {np.mean(list(rec.values())):.2f})"
                    if prec and rec and method != "given" else ""))
            lines.append(f"| {method_title(method)} | " + " | ".join(cells) + " |")

    lines += ["", "Wall time (s) per cell, mean over seeds (a \"+ Ours\" cell excludes the shared refinement, a "
              "correction cell the evidence the correction rows share; both listed separately):", "", "| Method | " + " | ".join(_noise_title(n) for n in noises) + " |",
              "|---|" + "---:|" * len(noises)]
    for method in methods:
        lines.append(f"| {method_title(method)} | " + " | ".join(
            _seconds(list(values(method, n, "seconds").values())) for n in noises) + " |")
    refine = {n: [float(r["refine_seconds"]) for r in rows if r["noise"] == n and r.get("refine_seconds")
                  not in (None, "") and r["method"] == "ours"] for n in noises}
    if any(refine.values()):
        lines.append("| refinement | " + " | ".join(_seconds(refine[n]) for n in noises) + " |")
    # the evidence the correction rows share (built once per noise setting and seed)
    shared = {n: [max(float(r["evidence_seconds"]) for r in rows if r["noise"] == n and int(r["seed"]) == seed
                      and r.get("evidence_seconds") not in (None, ""))
                  for seed in seeds if any(r["noise"] == n and int(r["seed"]) == seed
                                           and r.get("evidence_seconds") not in (None, "") for r in rows)]
              for n in noises}
    if any(shared.values()):
        lines.append("| shared evidence of the correction rows | " + " | ".join(_seconds(shared[n]) for n in noises)
                     + " |")
    total = (sum(float(r["seconds"]) for r in rows) + sum(sum(v) for v in refine.values())
             + sum(sum(v) for v in shared.values()))
    lines += ["", f"Total of the cells', refinements' and shared evidence's wall times: {total / 60:.1f} min "
                  f"(plus shared encoder features: {note.get('encoder_seconds', 0) / 60:.1f} min)."]
    return "\n".join(lines)


def write_all(out: Path) -> None:
    """Rebuild ``out/results.csv`` and ``out/results.md`` from every finished cell of ``out``
    (the protocol records ``out/bench-*.json`` give each table's notes)."""
    rows = read_cells(out)
    if not rows:
        return
    notes: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for path in out.glob("bench-*.json"):
        record = json.loads(path.read_text())
        seconds = [json.loads(p.read_text())["seconds"]
                   for p in (out / "work" / f"{record['dataset']}-{record['protocol']['name']}").glob(
                       "features/*.seconds.json")]
        notes[(record["dataset"], record["protocol"]["name"])] = {**record, "encoder_seconds": sum(seconds)}
    write_results(out, rows, notes)

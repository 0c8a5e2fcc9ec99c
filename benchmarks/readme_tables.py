"""The result tables of README.md and docs/*.md, regenerated from the result files in docs/results/.

Every table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``; NAME is a file in
docs/results/ (``NAME.csv``): rows of a results folder (``bench-*`` / ``compare-*``: the columns of
``synref bench`` / ``compare``'s ``results.csv`` and cells: dataset, protocol, method, noise, seed,
test_acc, label_acc, fix_precision; mean over seeds) or of ``synref demo``'s metrics (``demo-*``).

    python benchmarks/readme_tables.py              # rewrite the tables in place
    python benchmarks/readme_tables.py --check      # exit 1 when a table is not its file's
    python benchmarks/readme_tables.py --import OUT NAME   # docs/results/NAME.csv from a bench /
                                                           # compare folder's cells (a new run)
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
#: the pages whose tables are generated.
PAGES = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")
MARKER = re.compile(r"<!-- table: (?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- /table -->", re.S)
COLUMNS = ("dataset", "protocol", "method", "noise", "seed", "test_acc", "label_acc", "fix_precision")
#: the paper's five noise settings, in its column order.
NOISE_ORDER = ("pmd-0.35", "pmd-0.7", "pmd-0.35+u-0.3", "pmd-0.35+u-0.6", "pmd-0.35+a-0.3")

Rows = List[Dict[str, str]]


def noise_title(setting: str) -> str:
    """``pmd-0.35+u-0.3`` -> ``35% PMD + 30% U``."""
    kinds = {"pmd": "PMD", "u": "U", "a": "A"}
    return " + ".join(f"{float(part.partition('-')[2]) * 100:g}% {kinds.get(part.partition('-')[0], part)}"
                      for part in setting.split("+"))


def read_rows(name: str) -> Rows:
    with open(RESULTS / f"{name}.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _noises(rows: Rows) -> List[str]:
    present = {r["noise"] for r in rows}
    return [n for n in NOISE_ORDER if n in present] + sorted(present - set(NOISE_ORDER))


def _mean(rows: Rows, method: str, noise: str, key: str) -> float | None:
    values = [float(r[key]) for r in rows if r["method"] == method and r["noise"] == noise and r.get(key)]
    return sum(values) / len(values) if values else None


def _header(first: str, noises: Sequence[str]) -> List[str]:
    return [f"| {first} | " + " | ".join(noise_title(n) for n in noises) + " |", "|---|" + "---:|" * len(noises)]


#: the corrector table's rows: method -> title (``**...**``: the default, in bold).
CORRECTORS = {"given": "given labels", "argmax": "argmax of `pred_probs`",
              "cleanlab": "cleanlab `find_label_issues` + argmax", "prototype": "nearest anchor prototype",
              "refine-paper": "`paper` rule", "refine-crossfit": "`crossfit` (calibrated similarity, 1 round)",
              "refine-posterior": "**`posterior` (default)**"}


def compare_table(rows: Rows) -> str:
    """Label accuracy after correction, correctors x noise settings, and the precision of the
    default's changes."""
    noises = _noises(rows)
    lines = _header("corrector", noises)
    for method, title in CORRECTORS.items():
        values = [_mean(rows, method, n, "label_acc") for n in noises]
        if all(v is None for v in values):
            continue
        bold = title.startswith("**")
        lines.append(f"| {title} | " + " | ".join("-" if v is None else (f"**{v:.3f}**" if bold else f"{v:.3f}")
                                               for v in values) + " |")
        precision = [_mean(rows, method, n, "fix_precision") for n in noises]
        if any(p is not None for p in precision):
            lines.append("| precision of its changes | " + " | ".join("-" if p is None else f"{p:.3f}"
                                                                     for p in precision) + " |")
    return "\n".join(lines) + "\n"


#: the paper's table's rows: method -> title.
BENCH_METHODS = {"standard": "Standard", "ours": "**Ours (re-labeled)**",
                 "control": "Control (Ours' fine-tuning on the noisy labels)", "plc": "PLC", "plc+ours": "PLC + Ours",
                 "lra-simclr": "LRA (SimCLR)", "lra-simclr+ours": "LRA (SimCLR) + Ours",
                 "lra-efficientnet-lite0": "LRA (EfficientNet-Lite0)",
                 "lra-efficientnet-lite0+ours": "LRA (EfficientNet-Lite0) + Ours"}


def _base(method: str) -> str | None:
    return "standard" if method == "ours" else method[:-len("+ours")] if method.endswith("+ours") else None


def bench_table(rows: Rows) -> str:
    """Test accuracy (%), methods x noise settings, each "+ Ours" cell with its gain over the row
    it refines; then the accuracy of the noisy and the refined training labels."""
    noises = _noises(rows)
    lines = _header("Method", noises)
    for method, title in BENCH_METHODS.items():
        values = [_mean(rows, method, n, "test_acc") for n in noises]
        if all(v is None for v in values):
            continue
        base = _base(method)
        cells = []
        for n, v in zip(noises, values):
            text = "-" if v is None else f"{100 * v:.2f}"
            b = None if base is None else _mean(rows, base, n, "test_acc")
            if v is not None and b is not None:
                text += f" ({100 * (v - b):+.2f})"
            cells.append(f"**{text}**" if title.startswith("**") and v is not None else text)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for method, title in (("standard", "*label accuracy: noisy*"), ("ours", "*label accuracy: refined*")):
        values = [_mean(rows, method, n, "label_acc") for n in noises]
        if any(v is not None for v in values):
            lines.append(f"| {title} | " + " | ".join("-" if v is None else f"{100 * v:.2f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def demo_table(rows: Rows) -> str:
    """``synref demo``'s rows per noise setting: label accuracy, changes, precision, recall, test
    accuracy after fine-tuning, its control."""
    names = {"standard": "Standard (noisy labels)", "paper": "paper preset", "synref": "**synref default**"}
    lines = ["| noise (measured rate) | row | label acc | changed | precision | recall | test acc | control |",
             "|---|---|---|---|---|---|---|---|"]
    last = None
    for r in rows:
        noise = "" if r["noise"] == last else f"{noise_title(r['noise'])} ({float(r['noise_rate']):.3f})"
        last = r["noise"]
        bold = r["row"] == "synref"

        def cell(key: str, strong: bool = False) -> str:
            if not r.get(key):
                return ""
            text = r[key] if key == "num_changed" else f"{float(r[key]):.3f}"
            return f"**{text}**" if strong else text

        lines.append(f"| {noise} | {names[r['row']]} | {cell('label_acc', bold)} | {cell('num_changed')} | "
                     f"{cell('relabel_precision')} | {cell('relabel_recall')} | {cell('test_acc', bold)} | "
                     f"{cell('control_test_acc')} |")
    return "\n".join(lines) + "\n"


RENDERERS: Dict[str, Callable[[Rows], str]] = {"compare": compare_table, "bench": bench_table, "demo": demo_table}


def render(name: str) -> str:
    """The markdown table of docs/results/``name``.csv (its kind: the name's first part); ``scale``:
    the scaling table of docs/results/scale.json (benchmarks/scale_table.py)."""
    if name == "scale":
        import importlib.util
        import json

        spec = importlib.util.spec_from_file_location("scale_table", Path(__file__).with_name("scale_table.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module.scale_table(json.loads((RESULTS / "scale.json").read_text())) + "\n"
    return RENDERERS[name.split("-")[0]](read_rows(name))


def regenerate(text: str) -> str:
    """``text`` with every marked table rendered from its file."""
    return MARKER.sub(lambda m: f"<!-- table: {m['name']} -->\n{render(m['name'])}<!-- /table -->", text)


def import_cells(out: Path, name: str) -> Path:
    """docs/results/``name``.csv from the finished cells of a ``synref bench`` / ``compare --out``
    folder (``label_acc`` of a correction row is its accuracy after correction)."""
    rows = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    if not rows:
        raise SystemExit(f"{out}/cells: no finished cell")
    path = RESULTS / f"{name}.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a page's table is not its file's")
    parser.add_argument("--import", dest="source", nargs=2, metavar=("OUT", "NAME"),
                        help="write docs/results/NAME.csv from OUT/cells first")
    args = parser.parse_args(argv)
    if args.source:
        print(f"wrote {import_cells(Path(args.source[0]), args.source[1])}")
    stale = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        new = regenerate(text)
        if new != text:
            stale.append(page)
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check and stale:
        print("tables differ from docs/results/: " + ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 1
    print(("checked " if args.check else "regenerated ") + ", ".join(str(p.relative_to(ROOT)) for p in PAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())

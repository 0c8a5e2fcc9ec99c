"""The review page at scale: thumbnail time, bytes per item, time to interactive in Chromium.

Two modes:

- ``--results OUT``: time ``synref review`` on an existing results folder from scratch (its
  ``OUT/review/`` sheets removed first), i.e. what ``synref refine`` adds at the end of a run;
  then again with the sheets in place (a re-run).
- ``--cifar TAR --items N``: a results folder of N review items over real photos (the 60,000
  JPEGs of ``cifar10-jpeg.tar.gz``, 32 px, repeated past 60,000; every row changed to a random
  other class, glyph anchors), built in ``--work``; prints the time to write the page, its bytes per item, and
  the time to interactive of three loads in headless Chromium (Playwright on ``/usr/bin/chromium``);
  ``--shot PNG`` saves a screenshot (the README's).

    python benchmarks/review_scale.py --cifar ../shared/data/cifar10/cifar10-jpeg.tar.gz --items 100000 \\
        --work /tmp/review-scale
    python benchmarks/review_scale.py --results /tmp/synref-scale/n2000/out

Timings mean something only on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def folder_bytes(out: Path) -> int:
    return (out / "review.html").stat().st_size + sum(p.stat().st_size for p in (out / "review").iterdir())


def time_results(out: Path, workers: int) -> dict:
    from synref.apps.review import write_review

    shutil.rmtree(out / "review", ignore_errors=True)
    t0 = time.perf_counter()
    write_review(out, workers=workers)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_review(out, workers=workers)
    again = time.perf_counter() - t0
    items = json.loads((out / "review.html").read_text(encoding="utf-8").split('id="synref-data">')[1]
                       .split("</script>")[0])["shown"]
    summary = json.loads((out / "summary.json").read_text())
    return {"results": str(out), "samples": summary["num_samples"], "items": items,
            "review_seconds": round(first, 2), "rerun_seconds": round(again, 2),
            "refine_seconds": summary.get("seconds"), "bytes": folder_bytes(out),
            "bytes_per_item": round(folder_bytes(out) / max(items, 1), 1)}


def cifar_results(tar: Path, work: Path, n: int) -> Path:
    from review_helpers import glyph_anchors, write_results

    images = work / "images"
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    paths, labels = [], []
    if not (work / "images.json").is_file():
        with tarfile.open(tar) as archive:
            for member in archive:
                parts = member.name.split("/")
                if member.isfile() and len(parts) == 3:
                    target = images / parts[0] / parts[1] / parts[2]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.extractfile(member) as src:  # type: ignore[union-attr]
                        target.write_bytes(src.read())
                    paths.append(str(target))
                    labels.append(names.index(parts[1]))
        (work / "images.json").write_text(json.dumps({"paths": paths, "labels": labels}))
    listed = json.loads((work / "images.json").read_text())
    take = np.arange(n) % len(listed["paths"])
    paths, labels = [listed["paths"][k] for k in take], np.array(listed["labels"])[take]
    rng = np.random.default_rng(0)
    suggested = (labels + rng.integers(1, 10, len(labels))) % 10
    scores = rng.dirichlet(np.full(10, 0.5), size=len(labels)).astype(np.float32)
    scores[np.arange(len(labels)), suggested] += 1.0
    scores /= scores.sum(1, keepdims=True)
    out = work / "OUT"
    write_results(out, given=labels, suggested=suggested, scores=scores, paths=paths, class_names=names,
                  anchors=glyph_anchors(work / "anchors", names), data=str(images))
    return out


def time_browser(out: Path, shot: str = "") -> dict:
    from playwright.sync_api import sync_playwright

    from browser import launch

    loads = []
    with sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        for _ in range(3):
            t0 = time.perf_counter()
            page.goto((out / "review.html").resolve().as_uri(), wait_until="commit")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.keyboard.press("a")
            page.wait_for_function("document.getElementById('progress').getAttribute('data-decided') === '1'")
            loads.append((round(page.evaluate("window.synrefReview.readyAt") / 1000, 3),
                          round(time.perf_counter() - t0, 3)))
            page.keyboard.press("k")
            page.keyboard.press("u")
        if shot:
            for key in ("a", "a", "r", "j"):
                page.keyboard.press(key)
            page.screenshot(path=shot)
            page.keyboard.press("Home")
        browser.close()
    return {"ready_s": [r for r, _ in loads], "interactive_s": [w for _, w in loads]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--cifar", type=Path, default=None)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/review-scale"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shot", default="")
    args = parser.parse_args()
    if args.results is not None:
        print(json.dumps(time_results(args.results, args.workers)))
        return
    if args.cifar is None:
        parser.error("give --results OUT or --cifar TAR")
    out = cifar_results(args.cifar, args.work, args.items)
    row = time_results(out, args.workers)
    row.update(time_browser(out, args.shot))
    print(json.dumps(row))


if __name__ == "__main__":
    main()

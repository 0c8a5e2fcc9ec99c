"""synref report: the self-contained HTML page of a results folder."""
import csv
import html
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from synref.apps import report
from synref.cli import main
from synref.errors import InputError
from synref.apps.report import render_report, write_report

CLASSES = ["cat", "dog <b>", "a&b"]
COLUMNS = ("index,id,path,given_label,given_class,suggested_label,suggested_class,best_score,"
           "given_score,label_quality,changed").split(",")
# (index, given, suggested, best, given_score): the changed rows, in no particular order
CHANGES = [(3, 0, 1, 0.71, 0.30), (7, 1, 2, 0.95, 0.10), (11, 2, 0, 0.66, 0.40),
           (20, 0, 2, 0.80, 0.05), (33, 1, 0, 0.62, 0.50)]
# most confident first: margin best - given
EXPECTED_ORDER = [7, 20, 3, 11, 33]


def make_results(out: Path, *, n: int = 40, changes=CHANGES, scores: bool = True) -> dict:
    """A results folder as synref refine writes it: the CSV's paths are real PNG files (what the
    report opens), the summary names an anchor set on disk (6 glyph anchors per class)."""
    from PIL import Image

    from synref.anchors import create_generator, generate_anchor_set

    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    data = out.parent / "data"
    data.mkdir(exist_ok=True)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    given = rng.integers(0, 3, n)
    for index, g, _s, _b, _gs in changes:
        given[index] = g
    suggested = given.copy()
    best = rng.uniform(0.2, 0.55, n)
    gscore = best.copy()
    by_index = {c[0]: c for c in changes}
    rows = []
    for i in range(n):
        if i in by_index:
            _, g, s, b, gs = by_index[i]
            suggested[i], best[i], gscore[i] = s, b, gs
        path = data / f"{i}.png"
        Image.fromarray(images[i]).save(path)
        rows.append([i, f"img-{i}", str(path), given[i], CLASSES[given[i]],
                     suggested[i], CLASSES[suggested[i]], f"{best[i]:.4f}", f"{gscore[i]:.4f}",
                     f"{gscore[i] / best[i]:.4f}", "yes" if i in by_index else "no"])
    with open(out / "refined_labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    manifest = data / "<pets> & co.csv"  # the recorded dataset: the report opens only its files
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["path", "label", "id"]] + [[f"{i}.png", CLASSES[given[i]], f"img-{i}"]
                                                                  for i in range(n)])
    anchor_dir = out.parent / "anchors"
    if not anchor_dir.exists():
        generate_anchor_set(create_generator("glyph", size=16, texts={"cat": "C", "dog <b>": "D", "a&b": "A"}),
                            CLASSES, 6, anchor_dir)
    if scores:
        np.save(out / "scores.npy", rng.random((n, 3)).astype(np.float32))
    transitions = np.zeros((3, 3), int)
    for _, g, s, _b, _gs in changes:
        transitions[g, s] += 1
    summary = {
        "data": str(manifest), "labels_file": "noisy.csv", "num_samples": n,
        "num_classes": 3, "class_names": CLASSES, "image_size": [16, 16], "channels": 3,
        "anchors": {"dir": str(anchor_dir)}, "num_anchors": 18, "features": "clip", "classifier": "linear",
        "alpha": 0.5, "threshold": 0.615, "temperature": None, "num_changed": len(changes),
        "counts_before": np.bincount(given, minlength=3).tolist(),
        "counts_after": np.bincount(suggested, minlength=3).tolist(),
        "transitions": transitions.tolist(), "skipped": [], "seconds": 12.5, "synref_version": "9.9.9",
    }
    (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return {"given": given, "suggested": suggested, "images": images, "summary": summary,
            "anchors": anchor_dir, "data": data}


def cards(text):
    return re.findall(r'<article class="card" data-index="(\d+)"', text)


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "OUT"
    info = make_results(out)
    return out, info


def test_report_sections_counts_and_gallery(results):
    out, info = results
    path = write_report(out)
    assert path == out / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for section in ('id="summary"', 'id="counts"', 'id="transitions"', 'id="scores"', 'id="gallery"'):
        assert section in text
    # header facts
    assert "0.615" in text and "threshold" in text
    assert "5 (12.5%)" in text  # changed: 5 of 40
    assert "clip" in text and "linear" in text and "9.9.9" in text
    # counts table: before / after computed from the CSV
    before = np.bincount(info["given"], minlength=3)
    after = np.bincount(info["suggested"], minlength=3)
    table = text[text.index('<table class="counts">'):]
    table = table[:table.index("</table>")]
    for c, name in enumerate(CLASSES):
        row = re.search(rf'<tr><td>{c}</td><td class="name">{re.escape(html.escape(name))}</td>'
                        rf'<td class="before">(\d+)</td><td class="after">(\d+)</td>', table)
        assert row, name
        assert (int(row.group(1)), int(row.group(2))) == (before[c], after[c])
    # gallery: every change, most confident first
    assert [int(i) for i in cards(text)] == EXPECTED_ORDER
    assert "given: <span class=\"given\">dog &lt;b&gt;</span> (score 0.100)" in text
    assert "suggested: <span class=\"sugg\">a&amp;b</span> (score 0.950)" in text
    assert text.count("anchors of given class") == 5 and text.count("anchors of suggested class") == 5
    assert "img-7" in text and "top scores" in text


def test_gallery_limit_and_note(results):
    out, _ = results
    text = write_report(out, max_gallery=2).read_text(encoding="utf-8")
    assert [int(i) for i in cards(text)] == EXPECTED_ORDER[:2]
    assert "Showing the 2 most confident of 5 changed samples" in text
    text = write_report(out, max_gallery=0).read_text(encoding="utf-8")
    assert cards(text) == []


def test_self_contained_and_escaped(results):
    out, _ = results
    text = write_report(out).read_text(encoding="utf-8")
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(srcs) >= 5 + 3 + 5  # gallery images, plots, anchor strips
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert "<script" not in text
    # raw names never appear unescaped
    assert "dog <b>" not in text and "<pets>" not in text
    assert "dog &lt;b&gt;" in text and "a&amp;b" in text and "data/&lt;pets&gt; &amp; co" in text
    assert "a&b" not in text.replace("a&amp;b", "")
    assert len(text) < 5_000_000


def test_escapes_quotes_in_paths_and_ids(tmp_path):
    summary = {"class_names": ['say "hi"', "it's"], "threshold": 0.5, "data": "x"}
    rows = [{"index": 0, "id": 'id"><script>alert(1)</script>', "path": "p'q<r>.png", "given_label": 0,
             "suggested_label": 1, "best_score": 0.9, "given_score": 0.1, "changed": "yes"}]
    images = np.zeros((1, 8, 8, 1), np.uint8)
    text = render_report(summary, rows, images, None, None)
    assert "<script>" not in text and 'id"' not in text
    assert "id&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "p&#x27;q&lt;r&gt;.png" in text and "say &quot;hi&quot;" in text
    assert len(cards(text)) == 1


def test_render_report_pure_and_no_changes():
    summary = {"class_names": ["a", "b"], "threshold": 0.7}
    rows = [{"index": i, "given_label": i % 2, "suggested_label": i % 2, "best_score": 0.5,
             "given_score": 0.5, "changed": False} for i in range(4)]
    text = render_report(summary, rows, np.zeros((4, 8, 8), np.uint8), None, None)
    assert cards(text) == [] and "No labels were changed." in text and "0.7" in text


def test_header_shows_what_decided_and_a_failed_model_check():
    rows = [{"index": i, "given_label": i % 2, "suggested_label": i % 2, "best_score": 0.5,
             "given_score": 0.5, "changed": False} for i in range(4)]
    passed = {"class_names": ["a", "b"], "threshold": 0.7,
              "decision": {"model_check": "passed", "decided_by": "posterior", "estimated_precision": 0.87654}}
    text = render_report(passed, rows, np.zeros((4, 8, 8), np.uint8), None, None)
    assert "<dd>posterior</dd>" in text and "<dd>0.877</dd>" in text and "model check" not in text
    failed = {**passed, "decision": {"model_check": "failed: the anchors do not describe these images",
                                     "decided_by": "confident-learning", "estimated_precision": None}}
    text = render_report(failed, rows, np.zeros((4, 8, 8), np.uint8), None, None)
    assert "<dd>confident-learning</dd>" in text
    assert 'class="warn"' in text and "model check failed: the anchors do not describe these images" in text


def test_large_class_count_renders():
    c, n = 100, 300
    rng = np.random.default_rng(1)
    given = rng.integers(0, c, n)
    sugg = np.where(rng.random(n) < 0.3, rng.integers(0, c, n), given)
    rows = [{"index": i, "given_label": int(given[i]), "suggested_label": int(sugg[i]),
             "best_score": 0.8, "given_score": 0.2, "changed": bool(given[i] != sugg[i])} for i in range(n)]
    summary = {"class_names": [f"class_{k}" for k in range(c)], "threshold": 0.6}
    anchors = rng.integers(0, 256, (2 * c, 32, 32, 3), dtype=np.uint8)
    text = render_report(summary, rows, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), anchors,
                         np.repeat(np.arange(c), 2), rng.random((n, c)), max_gallery=10)
    assert len(cards(text)) == 10
    assert "per-cell counts are in the table" in text
    assert len(text) < 5_000_000


def test_atomic_when_rendering_fails(results, monkeypatch):
    out, _ = results

    def boom(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "_plot_transitions", boom)
    with pytest.raises(RuntimeError):
        write_report(out)
    assert not (out / "report.html").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".report.html")]


@pytest.mark.parametrize("remove, needle", [
    ("summary.json", "has no summary.json: run synref refine first"),
    ("refined_labels.csv", "has no refined_labels.csv"),
])
def test_missing_pieces_name_the_file(results, remove, needle):
    out, _ = results
    (out / remove).unlink()
    with pytest.raises(InputError, match=re.escape(needle)):
        write_report(out)
    assert not (out / "report.html").exists()


def test_report_opens_only_the_images_it_shows(results, monkeypatch):
    """No image array in the results folder: the gallery's samples are opened from their paths,
    and only those (plus a few anchors of each class shown)."""
    out, info = results
    assert not (out / "cache").exists()
    opened = []
    real = report._open_image
    monkeypatch.setattr(report, "_open_image", lambda path, channels: opened.append(path) or real(path, channels))
    text = write_report(out, max_gallery=2, anchors_per_side=3).read_text(encoding="utf-8")
    samples = [p for p in opened if Path(p).parent == info["data"]]
    assert sorted(samples) == sorted(str(info["data"] / f"{i}.png") for i in EXPECTED_ORDER[:2])
    anchors = [p for p in opened if str(info["anchors"]) in p]
    shown_classes = {c for i in EXPECTED_ORDER[:2] for c in (info["given"][i], info["suggested"][i])}
    assert len(anchors) == 3 * len(shown_classes) and len(opened) == 2 + len(anchors)
    # the card shows the file's pixels
    assert report.image_data_uri(info["images"][7], report.IMAGE_PX) in text


def test_missing_image_and_anchor_folder_do_not_stop_the_report(results):
    import shutil

    out, info = results
    (info["data"] / "7.png").unlink()
    shutil.rmtree(info["anchors"])
    text = write_report(out).read_text(encoding="utf-8")
    assert len(cards(text)) == 5 and text.count("image could not be opened") == 1
    assert "anchors of given class" not in text


def test_corrupt_anchor_set_names_it(results):
    out, info = results
    (info["anchors"] / "anchorset.json").write_text("garbage")
    with pytest.raises(InputError, match="anchor set"):
        write_report(out)


def test_array_datasets_are_reloaded_and_indexed(tmp_path):
    """digits (no files): the report loads the dataset named in the summary and shows its images."""
    from synref.data import load_digits_dataset

    digits = load_digits_dataset()
    summary = {"class_names": [str(i) for i in range(10)], "threshold": 0.5, "data": "digits", "channels": 1}
    rows = [{"index": i, "path": "", "given_label": int(digits.labels[i]), "suggested_label": int(digits.labels[i]),
             "best_score": 0.5, "given_score": 0.5, "changed": "no"} for i in range(len(digits))]
    rows[1234].update(given_label=(int(digits.labels[1234]) + 1) % 10, best_score=0.9, given_score=0.1,
                      changed="yes")
    text = render_report(summary, rows, report.sample_images(summary, rows), None, None)
    assert report.image_data_uri(digits.images[1234], report.IMAGE_PX) in text


def test_scores_are_optional(results):
    out, _ = results
    (out / "scores.npy").unlink()
    text = write_report(out).read_text(encoding="utf-8")
    assert len(cards(text)) == 5 and "top scores" not in text


@pytest.mark.parametrize("target, content, needle", [
    ("summary.json", "{not json", "summary.json"),
    ("summary.json", "[1, 2]", "summary.json"),
    ("scores.npy", "garbage", "scores.npy"),
])
def test_corrupt_pieces_name_the_file(results, target, content, needle):
    out, _ = results
    (out / target).write_text(content)
    with pytest.raises(InputError, match=re.escape(needle)):
        write_report(out)


def test_bad_csv_rows(results):
    out, _ = results
    text = (out / "refined_labels.csv").read_text()
    (out / "refined_labels.csv").write_text(text.replace(",yes\n", ",maybe\n", 1))
    with pytest.raises(InputError, match=r"refined_labels.csv row \d+"):
        write_report(out)
    (out / "refined_labels.csv").write_text("index,id\n0,a\n")
    with pytest.raises(InputError, match="no column 'given_label'"):
        write_report(out)
    lines = text.splitlines()
    lines[1] = "999" + lines[1][lines[1].index(","):]
    (out / "refined_labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="index 999"):
        write_report(out)


def test_cli_happy_path(results, capsys):
    out, _ = results
    assert main(["report", str(out), "--max-gallery", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "report.html")
    assert len(cards((out / "report.html").read_text(encoding="utf-8"))) == 3


@pytest.mark.parametrize("args", [["report", "{tmp}/nowhere"], ["report", "{tmp}"],
                                  ["report", "{out}", "--max-gallery", "-1"]])
def test_cli_errors_one_line_exit_2(results, tmp_path, capsys, args):
    out, _ = results
    code = main([a.format(tmp=tmp_path, out=out) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("synref: error: ") and "Traceback" not in err
    assert not (out / "report.html").exists()


def test_report_renders_in_headless_chromium(results, tmp_path):
    from PIL import Image

    from browser import CHROMIUM_FLAGS, require_chromium

    browser = require_chromium()
    out, _ = results
    page = write_report(out).resolve()
    shot = tmp_path / "shot.png"
    flags = [browser, *CHROMIUM_FLAGS, "--disable-quic", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    url = page.as_uri()
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,2400", url],
                   check=False, capture_output=True, timeout=120)
    assert shot.is_file(), "chromium wrote no screenshot"
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 500, "the screenshot looks blank"
    dom = subprocess.run(flags + ["--dump-dom", url], check=False, capture_output=True, timeout=120,
                         text=True).stdout
    assert 'id="gallery"' in dom
    assert len(re.findall(r'<article class="card"', dom)) == 5
    assert "dog &lt;b&gt;" in dom and "a&amp;b" in dom

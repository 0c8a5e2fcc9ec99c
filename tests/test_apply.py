"""synref apply: decisions + policy -> final labels, and every output exact (labels.csv, manifest,
folder tree, Label Studio tasks); nothing written inside the data; atomic and re-runnable."""
import csv
import json
import os

import numpy as np
import pytest

from review_helpers import CLASSES, consistent_scores, image_folder_results, write_results
from synref.apps.apply import parse_accept, run_apply
from synref.apps.results_folder import CHANGED, FLAGGED, read_results
from synref.cli import main
from synref.data import load_csv_manifest, load_labels_file
from synref.errors import InputError


@pytest.fixture
def folder(tmp_path):
    return image_folder_results(tmp_path)


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_decisions(path, rows, header=("index", "decision", "label", "given_label")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def picks(folder):
    """Three changed rows, one flagged row and one more changed row, with their suggestions."""
    results = read_results(folder["out"])
    changed = [(int(r), int(s)) for r, s, k in zip(results.items, results.proposal, results.kind) if k == CHANGED]
    flagged = [(int(r), int(s)) for r, s, k in zip(results.items, results.proposal, results.kind) if k == FLAGGED]
    return results, changed, flagged


def test_parse_accept():
    assert parse_accept("all") == "all" and parse_accept(["none"]) == "none"
    assert parse_accept(["above", "0.8"]) == 0.8 and parse_accept("above 0.25") == 0.25 and parse_accept(0.5) == 0.5
    for bad in (["above", "1.5"], ["above"], ["some"], "above x"):
        with pytest.raises(InputError, match="--accept"):
            parse_accept(bad)


def test_policies_and_decisions_give_the_exact_labels(folder, tmp_path):
    results, changed, flagged = picks(folder)
    given = folder["given"]
    (a1, s1), (a2, s2), (r1, _), (o1, _) = changed[:4]
    f1, sf1 = flagged[0]
    other = next(c for c in range(3) if c not in (given[o1], folder["suggested"][o1]))
    decisions = write_decisions(tmp_path / "d.csv", [[a1, "accept", s1, given[a1]], [a2, "accept", "", ""],
                                                     [r1, "reject", given[r1], given[r1]], [o1, "relabel", other, ""],
                                                     [f1, "accept", sf1, given[f1]]])
    p = {int(r): float(v) for r, v in zip(results.items, results.p)}
    for accept in ("all", "none", 0.7):
        dest = tmp_path / f"dest-{accept}"
        summary = run_apply(folder["out"], decisions=decisions, accept=accept, dest=dest, outputs="labels")
        expected = given.copy()
        for row, sugg in changed:
            if accept == "all" or (accept != "none" and p[row] >= accept):
                expected[row] = sugg
        expected[a1], expected[a2], expected[r1], expected[o1], expected[f1] = s1, s2, given[r1], other, sf1
        rows = rows_of(dest / "labels.csv")
        assert [int(r["label"]) for r in rows] == expected.tolist()
        assert [r["class"] for r in rows] == [CLASSES[k] for k in expected]
        assert load_labels_file(dest / "labels.csv", num_samples=60, num_classes=3).tolist() == expected.tolist()
        status = {int(r["index"]): r["status"] for r in rows}
        assert [status[k] for k in (a1, a2, r1, o1, f1)] == ["accepted", "accepted", "rejected", "relabelled", "accepted"]
        undecided = {int(i) for i in results.items} - {a1, a2, r1, o1, f1} - {
            row for row, _ in changed if accept == "all" or (accept != "none" and p[row] >= accept)}
        assert {k for k, s in status.items() if s == "undecided"} == undecided
        assert summary["status"]["undecided"] == len(undecided)
        assert summary["labels_changed"] == int((expected != given).sum())


@pytest.mark.parametrize("rows, needle", [
    ([[999, "accept", "", ""]], "index 999 is outside the 60 samples"),
    ([["x", "accept", "", ""]], "index 'x' is not an integer"),
    ([["{c}", "maybe", "", ""]], "decision 'maybe' is not accept, reject or relabel"),
    ([["{c}", "accept", "", ""], ["{c}", "reject", "", ""]], "decided twice"),
    ([["{c}", "relabel", "", ""]], "relabel needs a label"),
    ([["{c}", "relabel", "7", ""]], "label 7 is outside [0, 3)"),
    ([["{c}", "reject", "", "{wrong}"]], "were these decisions made for other results?"),
    ([["{k}", "accept", "", ""]], "has no suggestion to accept"),
])
def test_bad_decisions_name_the_row_and_write_nothing(folder, tmp_path, rows, needle):
    results, changed, _ = picks(folder)
    kept = next(i for i in range(60) if i not in set(results.items.tolist()))
    c = changed[0][0]
    wrong = (folder["given"][c] + 1) % 3
    rows = [[str(v).format(c=c, k=kept, wrong=wrong) for v in row] for row in rows]
    path = write_decisions(tmp_path / "d.csv", rows)
    with pytest.raises(InputError, match=r"d.csv row \d+: .*" + needle.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("?", r"\?")):
        run_apply(folder["out"], decisions=path, dest=tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_manifest_tree_and_label_studio_are_exact(folder, tmp_path):
    results, changed, _ = picks(folder)
    dest = tmp_path / "dest"
    summary = run_apply(folder["out"], accept="none", dest=dest)
    given = folder["given"]
    # manifest: the original files with the final (here: given) class names; synref reads it back
    manifest = load_csv_manifest(dest / "manifest.csv", class_names=CLASSES)
    assert manifest.paths == folder["paths"] and manifest.labels.tolist() == given.tolist()
    # tree: every image once, under its final class, a hard link to the original
    files = sorted((dest / "tree").rglob("*.png"))
    assert len(files) == 60
    for row in rows_of(dest / "labels.csv"):
        target = dest / "tree" / row["file"]
        assert row["file"].split("/")[0] == row["class"].replace("<", "_").replace(">", "_")
        assert os.path.samefile(target, folder["paths"][int(row["index"])])
    assert summary["tree"] == {"link": 60, "copy": 0, "written": 0, "moved": 0}
    # Label Studio: one task per undecided sample (all review items here), the suggestion as a prediction
    tasks = json.loads((dest / "label_studio.json").read_text(encoding="utf-8"))
    proposal = {int(r): int(s) for r, s in zip(results.items, results.proposal)}
    p = {int(r): float(v) for r, v in zip(results.items, results.p)}
    assert sorted(t["data"]["synref_index"] for t in tasks) == sorted(proposal)
    for task in tasks:
        i = task["data"]["synref_index"]
        assert task["data"]["image"] == "/data/local-files/?d=" + folder["paths"][i].lstrip("/").replace("<", "%3C")
        assert task["data"]["given_label"] == CLASSES[given[i]]
        (pred,) = task["predictions"]
        assert pred["score"] == pytest.approx(p[i], abs=1e-6)
        assert pred["result"][0]["value"]["choices"] == [CLASSES[proposal[i]]]
        assert pred["result"][0]["from_name"] == "label" and pred["result"][0]["to_name"] == "image"
    config = (dest / "label_studio_config.xml").read_text()
    assert '<Choice value="dog &lt;b&gt;"/>' in config and '<Choice value="a&amp;b"/>' in config
    assert json.loads((dest / "apply.json").read_text())["status"]["undecided"] == len(tasks)


def test_rerun_is_identical_and_a_new_policy_replaces_the_tree(folder, tmp_path):
    dest = tmp_path / "dest"
    run_apply(folder["out"], dest=dest)
    first = {p: p.read_bytes() for p in dest.glob("*.*") if p.name != "apply.json"}
    tree = sorted(str(p.relative_to(dest)) for p in (dest / "tree").rglob("*.png"))
    run_apply(folder["out"], dest=dest)
    assert {p: p.read_bytes() for p in dest.glob("*.*") if p.name != "apply.json"} == first
    assert sorted(str(p.relative_to(dest)) for p in (dest / "tree").rglob("*.png")) == tree
    run_apply(folder["out"], dest=dest, accept="none")
    given = folder["given"]
    for row in rows_of(dest / "labels.csv"):
        assert int(row["label"]) == given[int(row["index"])]
    assert len(list((dest / "tree").rglob("*.png"))) == 60  # the old tree is gone, not merged
    assert sorted(p.name for p in dest.iterdir()) == ["apply.json", "label_studio.json", "label_studio_config.xml",
                                                     "labels.csv", "manifest.csv", "tree"]


def test_copy_and_move(folder, tmp_path):
    dest = tmp_path / "dest"
    summary = run_apply(folder["out"], dest=dest, copy=True, outputs="tree")
    assert summary["tree"]["copy"] == 60
    one = next((dest / "tree").rglob("*.png"))
    original = next(p for p in folder["paths"] if os.path.basename(p) == one.name)
    assert not os.path.samefile(one, original) and one.read_bytes() == open(original, "rb").read()
    labels_before = rows_of(dest / "labels.csv")
    # --move: the originals leave the data folder, the tree holds them; a re-run finds them there
    summary = run_apply(folder["out"], dest=dest, move=True)
    assert summary["tree"]["moved"] == 60 and not any(os.path.exists(p) for p in folder["paths"])
    manifest = load_csv_manifest(dest / "manifest.csv", class_names=CLASSES)
    assert all(str(dest / "tree") in p for p in manifest.paths)
    summary = run_apply(folder["out"], dest=dest, move=True, accept="none")
    assert summary["tree"]["moved"] == 0 and len(list((dest / "tree").rglob("*.png"))) == 60
    assert [r["label"] for r in rows_of(dest / "labels.csv")] == [str(g) for g in folder["given"]]
    assert labels_before  # (the first run's labels were written too)


def test_never_writes_inside_the_data(folder, tmp_path):
    for dest in (folder["data"] / "fixed", folder["data"]):
        with pytest.raises(InputError, match="inside the data folder"):
            run_apply(folder["out"], dest=dest)
    assert sorted(p.name for p in folder["data"].iterdir()) == sorted(os.path.basename(p) for p in folder["paths"])


def test_a_failure_leaves_no_output(folder, tmp_path):
    dest = tmp_path / "dest"
    run_apply(folder["out"], dest=dest, accept="none")
    before = {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}
    pixels = open(folder["paths"][30], "rb").read()
    os.unlink(folder["paths"][30])
    (dest / "tree" / rows_of(dest / "labels.csv")[30]["file"]).unlink()  # gone from the last tree too
    with pytest.raises(InputError, match=r"sample 30 .*image file not found"):
        run_apply(folder["out"], dest=dest, accept="all")
    # the last good outputs stand, untouched; no partial tree, no temp file
    assert {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in dest.iterdir()) == sorted(list(before) + ["tree"])
    assert len(list((dest / "tree").rglob("*.png"))) == 59
    # an original gone but still in the last tree (e.g. after --move) is taken from there
    open(folder["paths"][30], "wb").write(pixels)
    fresh = tmp_path / "fresh"
    run_apply(folder["out"], dest=fresh, accept="none")
    os.unlink(folder["paths"][31])
    run_apply(folder["out"], dest=fresh, accept="all", outputs="manifest,tree")
    assert load_csv_manifest(fresh / "manifest.csv").paths[31].startswith(str(fresh / "tree"))


def test_arrays_without_files_get_their_images_written(tmp_path):
    """digits (no files): the tree holds PNGs of the images, the manifest points at them."""
    from PIL import Image

    from synref.data import load_digits_dataset

    digits = load_digits_dataset()
    n = 40
    scores, given, suggested = consistent_scores(n, 10, seed=1)
    given = digits.labels[:n].copy()
    suggested = np.where(scores.max(1) > 0.6, scores.argmax(1), given)
    write_results(tmp_path / "OUT", given=given, suggested=suggested, scores=scores, paths=[""] * n,
                  class_names=[str(i) for i in range(10)], data="digits", extra={"path_backed": False})
    dest = tmp_path / "dest"
    summary = run_apply(tmp_path / "OUT", dest=dest)
    assert summary["tree"]["written"] == n
    manifest = load_csv_manifest(dest / "manifest.csv", class_names=[str(i) for i in range(10)])
    assert manifest.labels.tolist() == suggested.tolist()
    for k in (0, 17):
        assert np.array_equal(np.asarray(Image.open(manifest.paths[k])), digits.images[k, :, :, 0])
    with pytest.raises(InputError, match="not image files; add the tree output"):
        run_apply(tmp_path / "OUT", dest=tmp_path / "d2", outputs="labels,manifest")


def test_results_without_images_give_the_labels(tmp_path):
    """A features-only run (no paths, --data not loadable): labels.csv by default; image outputs refused."""
    scores, given, suggested = consistent_scores(30, 3)
    write_results(tmp_path / "OUT", given=given, suggested=suggested, scores=scores, paths=[""] * 30,
                  data=str(tmp_path / "features.npy"), extra={"path_backed": False})
    summary = run_apply(tmp_path / "OUT", dest=tmp_path / "dest")
    assert summary["outputs"] == ["labels"] and sorted(p.name for p in (tmp_path / "dest").iterdir()) == [
        "apply.json", "labels.csv"]
    assert [int(r["label"]) for r in rows_of(tmp_path / "dest" / "labels.csv")] == suggested.tolist()
    with pytest.raises(InputError, match="have no images"):
        run_apply(tmp_path / "OUT", dest=tmp_path / "dest", outputs="labels,tree")


def test_cli_apply(folder, tmp_path, capsys):
    results, changed, _ = picks(folder)
    path = write_decisions(tmp_path / "d.csv", [[changed[0][0], "reject", "", ""]])
    dest = tmp_path / "dest"
    assert main(["apply", str(folder["out"]), "--decisions", str(path), "--accept", "above", "0.9", "--dest",
                 str(dest), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 rejected" in out and "--accept above 0.9" in out and str(dest / "labels.csv") in out
    for args, needle in (([], "--accept must be all, none or 'above P'"), (["--to", "zip"], "--to 'zip'"),
                         (["--to", "datasets"], "--to datasets writes a copy of a Hugging Face dataset")):
        extra = ["--accept", "maybe"] if not args else args
        assert main(["apply", str(folder["out"]), "--dest", str(tmp_path / "d3")] + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]
    assert main(["apply", str(folder["out"]), "--copy", "--move"]) == 2
    # the policy before OUT
    assert main(["apply", "--accept", "above", "0.5", str(folder["out"]), "--dest", str(tmp_path / "d4")]) == 0
    assert "--accept above 0.5" in capsys.readouterr().out
    assert main(["apply", "--accept", "none"]) == 2
    assert "give the results folder" in capsys.readouterr().err

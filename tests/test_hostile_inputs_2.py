"""Hostile and careless input, round 2 (issue 23): one test per row of the issue's table.

Round 1 (tests/test_hostile_inputs.py) made bad input fail loudly; these rows are results that
were silently wrong: a memory blow-up without a word, old results reported for new data, labels
moved on evidence too thin to estimate anything, labels matched by row order, formulas and files
leaking through CSVs and the report, options that did nothing. Data and models are tiny.
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synref.validation
from cli_helpers import assert_one_line_error, run
from synref.anchors import create_generator, generate_anchor_set, load_matched_anchors
from synref.apps.refine_run import RefineRunConfig, load_data
from synref.errors import InputError

SRC = str(Path(__file__).resolve().parents[1] / "src")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GiB = 2 ** 30


# --------------------------------------------------------------------------------- helpers
def make_folder(root: Path, *, n: int = 6, size: int = 8, classes=("0", "1"), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def glyphs(out: Path, classes=("0", "1"), per_class: int = 3) -> Path:
    generate_anchor_set(create_generator("glyph", size=8), list(classes), per_class, out)
    return out


@pytest.fixture(scope="module")
def anchors(tmp_path_factory) -> Path:
    return glyphs(tmp_path_factory.mktemp("anchors") / "set")


def train_args(data: Path, anchors: Path, out: Path, *extra) -> list:
    return ["refine", "--data", data, "--anchors", anchors, "--train", "--epochs", "1", "--folds", "2",
            "--out", out, "--quiet", *extra]


def synref_cli(*args, cwd=None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, SYNREF_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "synref", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


@pytest.fixture
def refused_before_running(monkeypatch):
    """Cases that must stop before any work: a run that starts anyway fails at once (today's code
    would refine all of digits)."""
    def started(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr("synref.apps.refine_run.run_refine", started)


def csv_rows(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------ 1: memory of the default pretrained path
def test_row01_pretrained_image_size_is_memory_checked_before_decoding(tmp_path, capsys, anchors, monkeypatch):
    monkeypatch.setattr(synref.validation, "available_memory", lambda: 16 * GiB)

    def decoding_started(*args, **kwargs):  # (today's code would decode 30 images at 5000 x 5000)
        raise AssertionError("features were computed before the memory check")

    monkeypatch.setattr("synref.pipeline.compute_features", decoding_started)
    data = make_folder(tmp_path / "data", n=15)
    out = tmp_path / "out"
    code, _, err = run(["refine", "--data", data, "--anchors", anchors, "--image-size", "5000", "--out", out,
                        "--quiet"], capsys)
    assert_one_line_error(code, err, "5000x5000", "memory", "--image-size")
    fits = int(err.split("--image-size ")[-1].split()[0])
    assert 160 <= fits < 5000  # a size that fits 16 GiB is named
    assert not out.exists()


# ---------------------------------------- 2: bench re-run with other label files into one --out
def test_row02_bench_refuses_cells_of_other_label_content(tmp_path, capsys, anchors):
    data = make_folder(tmp_path / "data", n=4)
    labels = tmp_path / "noisy.txt"
    labels.write_text("0\n0\n0\n0\n1\n1\n1\n1\n")  # the truth: the folders
    out = tmp_path / "bench"
    args = ["bench", "--dataset", data, "--labels", labels, "--anchors", anchors, "--methods", "given",
            "--test-split", "", "--out", out, "--quiet"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert float(csv_rows(out / "results.csv")[0]["label_acc"]) == 1.0
    labels.write_text("1\n1\n1\n1\n0\n0\n0\n0\n")  # the same file name, other labels
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, str(out), "data or label files")
    assert float(csv_rows(out / "results.csv")[0]["label_acc"]) == 1.0  # nothing was reported as new


def test_row02_bench_record_keys_noise_files_by_content(tmp_path):
    from synref.experiments import runner
    from synref.experiments.protocol import digits_protocol

    record, protocol = runner._check_protocol_record, digits_protocol()
    record(tmp_path, "digits", protocol, None, inputs={"noise_files": {"file:a": "1" * 64}})
    record(tmp_path, "digits", protocol, None, inputs={"noise_files": {"file:a": "1" * 64, "file:b": "2" * 64}})
    with pytest.raises(InputError, match="--noise-file content"):
        record(tmp_path, "digits", protocol, None, inputs={"noise_files": {"file:a": "3" * 64}})


# ------------------------------------------------------- 3: do no harm on tiny labelled sets
def _tiny_evidence(n_per_class: int, seed: int = 0):
    """3 well-separated clean classes, anchors from a shifted domain, and a linear head's pred_probs:
    the kind of evidence that moved most right labels of 25-30 CIFAR images."""
    from synref.evidence import linear_head_evidence

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(3, 16))
    y = np.repeat(np.arange(3), n_per_class)
    x = (means[y] + rng.normal(size=(len(y), 16))).astype(np.float32)
    ya = np.repeat(np.arange(3), 20)
    shift = np.zeros(16)
    shift[0] = 6.0  # the anchors look alike: mostly the shared shift (glyphs next to photos)
    a = (0.3 * means[ya] + shift + rng.normal(size=(len(ya), 16))).astype(np.float32)
    return linear_head_evidence(x, y, a, ya, num_classes=3, folds=4, seed=0), y


def test_row03_tiny_clean_set_changes_nothing():
    from synref.refiners import refine

    evidence, truth = _tiny_evidence(9)  # 27 images, 9 per class
    result = refine(evidence, "posterior")
    assert int(result.changed.sum()) == 0
    assert result.decision.decided_by == "none" and result.decision.estimated_precision is None
    assert "too little evidence" in result.decision.minimum_evidence
    with_target = refine(evidence, "posterior", target_precision=0.95)
    assert int(with_target.changed.sum()) == 0
    unguarded = refine(evidence, "posterior", min_rows_per_class=0)  # the rule off: today's refiner
    assert int(unguarded.changed.sum()) >= 10 and unguarded.decision.estimated_precision > 0.7  # all wrong


def test_row03_minimum_evidence_rule():
    from synref.refiners.minimum_evidence import MIN_ROWS_PER_CLASS, minimum_evidence

    enough = np.repeat(np.arange(3), MIN_ROWS_PER_CLASS)
    assert minimum_evidence(enough, 3) is None
    note = minimum_evidence(np.concatenate([enough, [0, 1]])[2:], 3, class_names=["cat", "dog", "ship"])
    assert note is not None and "'cat'" in note and f"{MIN_ROWS_PER_CLASS - 1} given labels" in note
    assert "1 of 3 classes" in note


def test_row03_tiny_set_is_said_in_summary_and_report(tmp_path, capsys, anchors):
    data = make_folder(tmp_path / "data", n=6)
    out = tmp_path / "out"
    code, text, err = run(train_args(data, anchors, out), capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_changed"] == 0
    assert summary["decision"]["minimum_evidence"].startswith("too little evidence")
    assert summary["decision"]["estimated_precision"] is None
    assert "too little evidence" in text
    assert "too little evidence" in (out / "report.html").read_text()


def _cifar_subset(root: Path, classes, per_class: int) -> Path:
    """A CSV manifest of the first ``per_class`` CIFAR-10 training JPEGs of each class (from the
    shared tarball)."""
    import tarfile

    wanted = {f"train/{c}/{i:04d}.jpg" for c in classes for i in range(per_class)}
    with tarfile.open(SHARED / "cifar10" / "cifar10-jpeg.tar.gz") as tar:
        for member in tar:
            name = member.name.lstrip("./")
            if name in wanted:
                (root / Path(name).parent).mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(tar.extractfile(member).read())
    manifest = root / "subset.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([[f"train/{c}/{i:04d}.jpg", c] for c in classes for i in range(per_class)])
    return manifest


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10" / "cifar10-jpeg.tar.gz").is_file(), reason="needs ../shared CIFAR-10")
@pytest.mark.parametrize("classes, per_class", [(("airplane", "cat", "ship"), 9),
                                                (("airplane", "cat", "ship"), 10),
                                                (("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                  "horse", "ship", "truck"), 3),
                                                (("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                  "horse", "ship", "truck"), 10)])
def test_row03_clean_cifar_subsets_change_at_most_one_percent(tmp_path, classes, per_class):
    manifest = _cifar_subset(tmp_path / "cifar", classes, per_class)
    out = tmp_path / "out"
    done = synref_cli("refine", "--data", manifest, "--generate", "--per-class", "20", "--out", out, "--quiet",
                      timeout=900)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_changed"] <= 0.01 * summary["num_samples"], summary["decision"]


# --------------------------------------------------- 4: --labels CSV with a path column
def test_row04_labels_csv_is_matched_by_path(tmp_path):
    data = make_folder(tmp_path / "data", n=5, classes=("a", "b", "c"))
    config = RefineRunConfig(data=str(data), generator="glyph")
    dataset = load_data(config)
    rng = np.random.default_rng(1)
    wanted = rng.integers(0, 3, len(dataset))
    rows = [[p, dataset.class_names[w]] for p, w in zip(dataset.ids, wanted)]
    rows = [rows[i] for i in rng.permutation(len(rows))]  # shuffled
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label"]] + rows)
    got = load_data(RefineRunConfig(data=str(data), generator="glyph", labels=str(labels))).labels
    np.testing.assert_array_equal(got, wanted)
    with open(labels, "a", newline="") as handle:
        csv.writer(handle).writerow(["a/not-there.png", "a"])
    with pytest.raises(InputError, match="not-there.png"):
        load_data(RefineRunConfig(data=str(data), generator="glyph", labels=str(labels)))


# --------------------------------------------------------------- 5: CSV labels are strings
def test_row05_csv_labels_are_strings(tmp_path):
    from synref.data import load_dataset

    make_folder(tmp_path / "img", n=3, classes=("x",))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nimg/x/0.png,0\nimg/x/1.png,01\nimg/x/2.png,1\n")
    ds = load_dataset(str(manifest))
    assert ds.class_names == ["0", "01", "1"] and ds.labels.tolist() == [0, 1, 2]


# ------------------------------------------------------- 6: 'digits' beside a ./digits folder
def test_row06_digits_beside_a_digits_folder_is_ambiguous(tmp_path, monkeypatch):
    from synref.data import load_dataset

    make_folder(tmp_path / "digits", n=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="ambiguous") as info:
        load_dataset("digits")
    assert "built-in digits" in str(info.value) and str(tmp_path / "digits") in str(info.value)
    assert len(load_dataset("./digits")) == 4  # the folder, when named as one


# ----------------------------------------------------------- 7: hand-edited config.json
@pytest.mark.parametrize("field, value, needle", [
    ("calibrate", "no", "true or false"), ("alpha", "x", "a number"), ("folds", "4", "an integer"),
    ("image_size", "abc", "an integer or null"), ("rounds", 1.5, "an integer"), ("seed", True, "an integer"),
])
def test_row07_hand_edited_config_json_is_type_checked(tmp_path, capsys, field, value, needle,
                                                       refused_before_running):
    config = RefineRunConfig(data="digits", generator="glyph").to_dict()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config, field: value}))
    code, _, err = run(["refine", "--config", path, "--out", tmp_path / "o", "--quiet"], capsys)
    assert_one_line_error(code, err, str(path), f"option {field} must be {needle}")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------- 8: CSV formula injection
def test_row08_csv_cells_are_neutralised_and_read_back(tmp_path, capsys):
    from synref.apps.report import load_results
    from synref.experiments.results import write_results

    names = ["=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)"]
    data = make_folder(tmp_path / "data", n=3, classes=names)
    anchors = glyphs(tmp_path / "anchors", classes=names)
    out = tmp_path / "out"
    code, _, err = run(train_args(data, anchors, out), capsys)
    assert code == 0, err
    rows = csv_rows(out / "refined_labels.csv")
    cells = [r[k] for r in rows for k in ("given_class", "suggested_class", "id", "path")]
    assert all(not cell.startswith(("=", "+", "-", "@")) for cell in cells)
    assert {r["given_class"] for r in rows} == {"'" + n for n in names}
    table = load_results(out)["rows"]  # synref's own reader gets the ids and paths back
    read_back = {table.strings(k) for k in range(len(table))}
    assert read_back == {(r["id"][1:], r["path"]) for r in rows} and all(i.startswith(tuple("=+-@")) for i, _ in read_back)
    write_results(tmp_path, [{"dataset": "=cmd|' /C calc'!A0", "protocol": "p", "method": "given", "noise": "given",
                              "seed": 0, "label_acc": -0.5, "seconds": 1.0}], {})
    row = csv_rows(tmp_path / "results.csv")[0]
    assert row["dataset"].startswith("'=") and row["label_acc"] == "-0.5"
    from synref.io import csv_text, read_csv_text

    for text in names + ["'quoted", "plain", "\tx", ""]:
        assert read_csv_text(csv_text(text)) == text


# -------------------------------------------------------------- 9: the report's image files
def test_row09_report_opens_only_the_recorded_dataset_files(tmp_path, capsys, anchors, monkeypatch):
    import synref.apps.report as report

    data = make_folder(tmp_path / "data", n=6)
    out = tmp_path / "out"
    code, _, err = run(train_args(data, anchors, out), capsys)
    assert code == 0, err
    secret = tmp_path / "private.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    rows = csv_rows(out / "refined_labels.csv")
    rows[0].update(path=str(secret), changed="yes", suggested_label="1", suggested_class="1")  # shown in the gallery
    with open(out / "refined_labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    opened = []
    real_open = report._open_image
    monkeypatch.setattr(report, "_open_image", lambda path, channels: (opened.append(path),
                                                                         real_open(path, channels))[1])
    code, _, err = run(["report", out], capsys)
    assert code == 0, err
    assert str(secret) not in opened
    rows[0].update(path=rows[1]["path"])  # another sample's file under this sample's id: not shown either
    with open(out / "refined_labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    opened.clear()
    assert run(["report", out], capsys)[0] == 0
    assert rows[1]["path"] not in opened


# ------------------------------------------------------- 10: one writer per --out, a notice
def test_row10_a_second_run_into_a_busy_out_is_refused(tmp_path, capsys, anchors):
    from filelock import FileLock

    import synref.io

    data = make_folder(tmp_path / "data")
    OUTPUT_LOCK = getattr(synref.io, "OUTPUT_LOCK", ".synref-run.lock")
    out = tmp_path / "out"
    out.mkdir()
    lock = FileLock(str(out / OUTPUT_LOCK))
    lock.acquire()  # another run is writing
    try:
        code, _, err = run(train_args(data, anchors, out), capsys)
    finally:
        lock.release()
    assert_one_line_error(code, err, str(out), "another synref run")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_LOCK]
    code, _, err = run(train_args(data, anchors, out), capsys)
    assert code == 0, err
    code, _, err = run(train_args(data, anchors, out, "--seed", "3"), capsys)
    assert code == 0, err
    assert "replacing the finished results" in err and "seed: 0 -> 3" in err


def test_row10_racing_runs_one_wins_the_other_is_refused(tmp_path, anchors):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=SRC, SYNREF_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-m", "synref", *map(str, train_args(data, anchors, out))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        assert any("another synref run" in err for code, err in results if code == 2)
    assert (out / "summary.json").is_file()


# -------------------------------------------------- 11: --config run from another folder
def test_row11_config_rerun_from_another_folder_uses_the_same_files(tmp_path, anchors):
    first, second = tmp_path / "a", tmp_path / "b"
    make_folder(first / "data", seed=0)
    make_folder(second / "data", n=9, seed=5)  # same relative name, other images
    done = synref_cli(*train_args(Path("data"), anchors, Path("out")), cwd=first)
    assert done.returncode == 0, done.stderr
    config = json.loads((first / "out" / "config.json").read_text())
    assert config["data"] == str(first / "data")
    again = synref_cli("refine", "--config", first / "out" / "config.json", "--out", "out2", "--quiet", cwd=second)
    assert again.returncode == 0, again.stderr
    assert (second / "out2" / "refined_labels.csv").read_bytes() == (first / "out" / "refined_labels.csv").read_bytes()


# ----------------------------------------------------- 12: duplicate rows of a CSV manifest
def test_row12_duplicate_manifest_rows(tmp_path):
    from synref.data import load_dataset

    make_folder(tmp_path / "img", n=3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nimg/0/0.png,0\nimg/0/1.png,0\nimg/0/0.png,0\nimg/1/0.png,1\n")
    with pytest.warns(UserWarning, match="row 3 repeats row 1"):
        ds = load_dataset(str(manifest))
    assert len(ds) == 3 and len(set(ds.ids)) == 3
    manifest.write_text("path,label\nimg/0/0.png,0\nimg/1/0.png,1\nimg/0/0.png,1\n")
    with pytest.raises(InputError, match=r"row 3 .*label '1', row 1 .*gave it '0'"):
        load_dataset(str(manifest))


# --------------------------------------------------- 13: a replaced anchor image is refused
def test_row13_replaced_anchor_is_refused_when_loaded(tmp_path, capsys):
    anchors = glyphs(tmp_path / "anchors")
    manifest = [json.loads(line) for line in (anchors / "manifest.jsonl").read_text().splitlines()]
    sizes = [(anchors / row["file"]).stat().st_size for row in manifest]
    victim = anchors / manifest[4]["file"]
    Image.new("RGB", (8, 8), (0, 255, 0)).save(victim)  # a valid image, not the one generated
    with pytest.raises(InputError, match=str(victim)):
        load_matched_anchors(anchors, ["0", "1"], decode=False)
    data = make_folder(tmp_path / "data")
    code, _, err = run(train_args(data, anchors, tmp_path / "out"), capsys)
    assert_one_line_error(code, err, str(victim), "manifest")
    assert [row.get("bytes") for row in manifest] == sizes  # the rows carry the file size: a cheap first check


# ------------------------------------------------------- 14: fewer than two classes present
def test_row14_one_class_is_refused_and_classes_are_the_labels_present(tmp_path, capsys, anchors):
    from synref.data import load_dataset

    data = make_folder(tmp_path / "data", classes=("0",))
    code, _, err = run(train_args(data, anchors, tmp_path / "out"), capsys)
    assert_one_line_error(code, err, "at least 2 classes", "'0'")
    assert not (tmp_path / "out").exists()
    make_folder(tmp_path / "img", n=3, classes=("x",))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nimg/x/0.png,9\nimg/x/1.png,7\nimg/x/2.png,5\n")
    ds = load_dataset(str(manifest))
    assert ds.class_names == ["5", "7", "9"] and ds.num_classes == 3 and ds.labels.tolist() == [2, 1, 0]


# -------------------------------------------- 15: files left out of class folders are listed
def test_row15_other_formats_and_hidden_files_are_listed(tmp_path, capsys, anchors):
    data = make_folder(tmp_path / "data")
    (data / "0" / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (data / "1" / "logo.svg").write_text("<svg/>")
    Image.new("RGB", (8, 8)).save(data / "1" / ".hidden.png")
    out = tmp_path / "out"
    code, _, err = run(["refine", "--data", data, "--anchors", anchors, "--image-size", "32", "--out", out,
                        "--quiet"], capsys)  # the default (pretrained) evidence
    assert code == 0, err
    skipped = {Path(s["file"]).name: s["reason"] for s in json.loads((out / "summary.json").read_text())["skipped"]}
    assert set(skipped) == {"photo.heic", "logo.svg", ".hidden.png"}
    assert ".heic" in skipped["photo.heic"] and "hidden" in skipped[".hidden.png"]


# ------------------------------------------------------------- 16: a 12000 x 12000 1-bit PNG
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from /proc")
def test_row16_huge_one_bit_png_is_decoded_straight_to_the_working_size(tmp_path):
    big = tmp_path / "big.png"
    img = Image.new("1", (12000, 12000))
    img.paste(1, (0, 0, 6000, 12000))
    img.save(big)
    assert big.stat().st_size < 100_000
    probe = ("import re, warnings\n"
             "warnings.simplefilter('error')\n"
             "from synref.data.decode import decode_image\n"
             f"a = decode_image({str(big)!r}, (160, 160), 3)\n"
             "peak = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)\n"  # this process's own
             "print(a.shape, int(a[80, 40, 0]), int(a[80, 120, 0]), peak)\n")
    env = dict(os.environ, PYTHONPATH=SRC)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr  # no DecompressionBombWarning
    shape, white, black, rss_kib = done.stdout.rsplit(" ", 3)
    assert shape == "(160, 160, 3)" and (int(white), int(black)) == (255, 0)
    assert int(rss_kib) < 600 * 1024  # today: 864 MiB (and a decompression-bomb warning first)


# -------------------------------------------------------------- 17: synref noise outputs
def test_row17_noise_out_format_input_and_inline_class_map(tmp_path, capsys):
    labels = tmp_path / "l.npy"
    np.save(labels, np.arange(20) % 10)
    before = labels.read_bytes()
    code, _, err = run(["noise", "hybrid", "--labels", labels, "--kind", "uniform", "--rate", "0.3",
                        "--num-classes", "10", "--out", labels], capsys)
    assert_one_line_error(code, err, "--out", "--labels", "overwrite")
    assert labels.read_bytes() == before
    text = tmp_path / "noisy.txt"
    code, _, err = run(["noise", "hybrid", "--labels", labels, "--kind", "asymmetric", "--rate", "1",
                        "--num-classes", "10", "--class-map", '{"3": 5}', "--out", text], capsys)
    assert code == 0, err
    written = [int(v) for v in text.read_text().split()]
    assert len(written) == 20 and written[3] == written[13] == 5 and written[0] == 0


# ------------------------------------------------------ 18: --out and the anchor set, links
def test_row18_out_in_the_anchor_set_or_through_a_link_is_refused(tmp_path, capsys):
    anchors = glyphs(tmp_path / "anchors")
    data = make_folder(tmp_path / "data")
    before = sorted(p.name for p in anchors.rglob("*"))
    code, _, err = run(train_args(data, anchors, anchors), capsys)
    assert_one_line_error(code, err, "--out", "--anchors")
    code, _, err = run(train_args(data, anchors, anchors / "results"), capsys)
    assert_one_line_error(code, err, "--out", "--anchors")
    assert sorted(p.name for p in anchors.rglob("*")) == before
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "cache").symlink_to(elsewhere)
    code, _, err = run(train_args(data, anchors, out), capsys)
    assert_one_line_error(code, err, "cache", "symbolic link")
    assert list(elsewhere.iterdir()) == []


# ------------------------------------------------------------ 19: options that do not apply
@pytest.mark.parametrize("extra, option", [
    (["--rounds", "5"], "--rounds"), (["--alpha", "0.3"], "--alpha"), (["--threshold", "0.5"], "--threshold"),
    (["--no-calibrate"], "--no-calibrate"), (["--epochs", "3"], "--epochs"), (["--folds", "3", "--classifier", "m.pt"],
                                                                            "--folds"),
    (["--arch", "resnet18"], "--arch"), (["--per-class", "5"], "--per-class"), (["--generator", "diffusers"],
                                                                               "--generator"),
    (["--prompt", "a photo of {category}"], "--prompt"), (["--clip-model", "x"], "--clip-model"),
    (["--train", "--rounds", "2"], "--rounds"), (["--train", "--batch-size", "8"], "--batch-size"),
])
def test_row19_options_that_do_not_apply_are_refused(tmp_path, capsys, anchors, extra, option,
                                                     refused_before_running):
    out = tmp_path / "out"
    code, _, err = run(["refine", "--data", "digits", "--anchors", anchors, "--refiner", "posterior", *extra,
                        "--out", out, "--quiet"], capsys)
    assert_one_line_error(code, err, option, "does not apply", "applies to")
    assert not out.exists()


def test_row19_issue22_posterior_options_with_generate(tmp_path, capsys, refused_before_running):
    for extra, option in ((["--rounds", "5"], "--rounds"), (["--alpha", "0.3"], "--alpha"),
                          (["--threshold", "0.5"], "--threshold"), (["--no-calibrate"], "--no-calibrate")):
        code, _, err = run(["refine", "--data", "digits", "--generate", "--refiner", "posterior", *extra,
                            "--out", tmp_path / "X"], capsys)
        assert_one_line_error(code, err, option, "--refiner posterior")
    assert not (tmp_path / "X").exists()


def test_row19_config_plus_any_option_is_refused(tmp_path, capsys, refused_before_running):
    path = tmp_path / "config.json"
    RefineRunConfig(data="digits", generator="glyph").save(path)
    code, _, err = run(["refine", "--config", path, "--seed", "0", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "--config", "--seed")  # even at its default value


def test_row19_options_that_apply_are_accepted():
    from synref.apps.refine_options import check_options_apply, option_applies, refine_config

    crossfit = refine_config({"data": "digits", "generator": "glyph", "refiner": "crossfit", "train": True,
                              "rounds": 2})
    for option in ("rounds", "alpha", "threshold", "calibrate", "epochs", "model", "folds", "per_class"):
        assert option_applies(crossfit, option), option
    check_options_apply(crossfit, {"rounds": "--rounds", "epochs": "--epochs"})
    clip = RefineRunConfig.from_dict({"data": "digits", "generator": "glyph", "features": "clip"})  # (old layout)
    assert option_applies(clip, "clip_model") and option_applies(clip, "batch_size")
    assert not option_applies(clip, "rounds") and not option_applies(clip, "alpha")

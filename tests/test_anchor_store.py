"""Anchor sets on disk: round trip, resume after crashes, mismatched re-runs, verify, the folder
generator and class lists."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from synref.anchors.base import AnchorGenerator
from synref.anchors.folder import FolderGenerator
from synref.anchors.glyph import GlyphGenerator
from synref.anchors.store import AnchorSet, load_anchor_set
from synref.errors import InputError
from synref.anchors.generate import (CIFAR10_CLASSES, generate_anchor_set,
                                     parse_class_list)

CLASSES = ["0", "1", "2"]
PER_CLASS = 4


class Counting(AnchorGenerator):
    """Glyph images; counts the items it generates and can 'crash' after ``fail_after``."""

    name = "counting"

    def __init__(self, fail_after=None, size=12):
        self.inner = GlyphGenerator(size=size)
        self.fail_after = fail_after
        self.calls = 0
        self.items = []

    def config(self):
        return {"size": self.inner.size}

    def describe(self, c, name, k, seed=0):
        return {"prompt": f"the digit {name}", "image_seed": seed * 1000 + c * 100 + k,
                "model": "glyph", "steps": 1, "guidance": 0.0, "size": 12}

    def generate_one(self, c, name, k, seed=0):
        return self.inner.generate_one(c, name, k, seed)

    def generate_batch(self, items, seed=0):
        if self.fail_after is not None and len(self.items) + len(items) > self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.items.extend((c, k) for c, _, k in items)
        return super().generate_batch(items, seed)


def run(out, gen=None, per_class=PER_CLASS, **kw):
    gen = gen or Counting()
    kw.setdefault("batch_size", 2)
    return generate_anchor_set(gen, CLASSES, per_class, out, **kw), gen


def snapshot(out):
    ds, rows = load_anchor_set(out, verify=True, with_manifest=True)
    return ds, {(r["class_index"], r["k"]): r["sha256"] for r in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "set"
    run(out)
    return snapshot(out)


def assert_same(out, reference):
    ds, shas = snapshot(out)
    ref_ds, ref_shas = reference
    np.testing.assert_array_equal(ds.images, ref_ds.images)
    np.testing.assert_array_equal(ds.labels, ref_ds.labels)
    assert ds.ids == ref_ds.ids
    assert shas == ref_shas


# ------------------------------------------------------------------------------ round trip
def test_round_trip(tmp_path):
    out = tmp_path / "set"
    summary, gen = run(out)
    assert summary["generated"] == 12 and summary["complete"] and summary["present"] == 12
    meta = json.loads((out / "anchorset.json").read_text())
    assert meta["class_names"] == CLASSES and meta["per_class"] == PER_CLASS and meta["seed"] == 0
    assert meta["generator"] == {"name": "counting", "config": {"size": [12, 12]}}
    assert "created" in meta and "synref_version" in meta
    ds, rows = load_anchor_set(out, with_manifest=True)
    expected = gen.generate(CLASSES, PER_CLASS)
    np.testing.assert_array_equal(ds.images, expected.images)
    np.testing.assert_array_equal(ds.labels, np.repeat(np.arange(3), PER_CLASS))
    assert ds.class_names == CLASSES and ds.ids[5] == "counting-1-1"
    for i, row in enumerate(rows):
        c, k = divmod(i, PER_CLASS)
        assert (row["class_index"], row["class_name"], row["k"]) == (c, CLASSES[c], k)
        assert row["file"] == f"images/{c}_{CLASSES[c]}/{k}.png"
        data = (out / row["file"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["prompt"] == f"the digit {CLASSES[c]}" and row["image_seed"] == c * 100 + k
        for key in ("model", "steps", "guidance", "size"):
            assert key in row
    assert ds.paths[0] == str(out / rows[0]["file"])
    # path-backed load
    lazy = load_anchor_set(out, decode=False)
    assert lazy.images is None and lazy.paths == ds.paths


def test_safe_class_folder_names(tmp_path):
    gen = GlyphGenerator(size=8, texts={"sweet pepper/x": "p", "..": "d"})
    generate_anchor_set(gen, ["sweet pepper/x", ".."], 1, tmp_path / "s")
    folders = sorted(p.name for p in (tmp_path / "s" / "images").iterdir())
    assert folders == ["0_sweet_pepper_x", "1_class"]
    assert load_anchor_set(tmp_path / "s").class_names == ["sweet pepper/x", ".."]


# ------------------------------------------------------------------------------ resume
def test_resume_after_crash_generates_only_missing(tmp_path, reference):
    out = tmp_path / "set"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(out, Counting(fail_after=5))
    store = AnchorSet.open(out)
    done = len(store.present_keys())
    assert done == 4  # two batches of 2 made it; no half-written image is left
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(InputError, match="incomplete"):
        load_anchor_set(out)
    assert len(load_anchor_set(out, allow_incomplete=True)) == done
    summary, gen = run(out)
    assert summary["already_present"] == done and summary["generated"] == 12 - done
    assert sorted(gen.items) == sorted(set(gen.items)) and len(gen.items) == 12 - done
    assert summary["complete"]
    assert_same(out, reference)
    # a third run does nothing
    summary, gen = run(out)
    assert gen.calls == 0 and summary["generated"] == 0


def test_resume_repairs_rows_files_and_temp_files(tmp_path, reference):
    out = tmp_path / "set"
    run(out)
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    rows = [json.loads(line) for line in lines]
    # (1) a file whose row exists is gone -> row dropped, image regenerated
    os.unlink(out / rows[1]["file"])
    # (2) a file without a row (killed between rename and row) -> re-hashed and adopted
    # (3) a file without a row that does not decode -> regenerated
    keep = [line for i, line in enumerate(lines) if i not in (6, 9)]
    (out / rows[9]["file"]).write_bytes(b"not a png")
    # (4) a torn last line, (5) a stray temp file of a killed write
    manifest.write_text("".join(keep) + '{"class_index": 2, "cla')
    stray = out / "images" / "0_0" / ".3.png.abc123.tmp"
    stray.write_bytes(b"half")
    store = AnchorSet.open(out)
    assert (0, 1) not in store.rows and set(store.orphans) == {(1, 2), (2, 1)}
    assert [(it[0], it[2]) for it in store.missing_items()] == [(0, 1), (1, 2), (2, 1)]
    summary, gen = run(out)
    assert sorted(gen.items) == [(0, 1), (2, 1)]
    assert summary["adopted"] == 1 and summary["generated"] == 2
    assert not stray.exists()
    assert_same(out, reference)
    # the torn line stayed a line of its own: every later row parses
    parsed = 0
    for line in manifest.read_text().splitlines():
        try:
            json.loads(line)
            parsed += 1
        except ValueError:
            assert line.startswith('{"class_index": 2, "cla')
    assert parsed == 10 + 3


def test_conflicting_rows_resolved_by_hash(tmp_path, reference):
    out = tmp_path / "set"
    run(out)
    manifest = out / "manifest.jsonl"
    row = json.loads(manifest.read_text().splitlines()[0])
    stale = dict(row, sha256="0" * 64)
    manifest.write_text(json.dumps(stale) + "\n" + manifest.read_text())
    store = AnchorSet.open(out)
    assert store.rows[(0, 0)]["sha256"] == row["sha256"]
    assert_same(out, reference)


def test_grow_per_class_generates_only_new_k(tmp_path):
    out = tmp_path / "set"
    run(out, per_class=2)
    summary, gen = run(out, per_class=PER_CLASS)
    assert sorted(gen.items) == [(c, k) for c in range(3) for k in (2, 3)]
    assert json.loads((out / "anchorset.json").read_text())["per_class"] == PER_CLASS
    assert summary["complete"] and len(load_anchor_set(out)) == 12


@pytest.mark.parametrize("change, message", [
    (dict(classes=["0", "1", "3"]), "other classes"),
    (dict(classes=["1", "0", "2"]), "other order"),
    (dict(gen=Counting(size=16)), "size"),
    (dict(seed=1), "seed"),
    (dict(per_class=2), "4 images per class"),
    (dict(gen=GlyphGenerator(size=12)), "generator 'counting'"),
])
def test_mismatched_rerun_is_refused(tmp_path, change, message):
    out = tmp_path / "set"
    run(out)
    before = sorted(p.name for p in out.rglob("*"))
    gen = change.get("gen", Counting())
    with pytest.raises(InputError, match=message):
        generate_anchor_set(gen, change.get("classes", CLASSES), change.get("per_class", PER_CLASS),
                            out, seed=change.get("seed", 0))
    assert sorted(p.name for p in out.rglob("*")) == before


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_verify_catches_tampered_file(tmp_path):
    out = tmp_path / "set"
    run(out)
    target = out / "images" / "1_1" / "2.png"
    arr = np.asarray(Image.open(target)).copy()
    arr[0, 0] ^= 1
    Image.fromarray(arr).save(target)
    load_anchor_set(out)  # not verified: loads
    with pytest.raises(InputError, match=r"images/1_1/2\.png"):
        load_anchor_set(out, verify=True)


def test_not_an_anchor_set(tmp_path):
    with pytest.raises(InputError, match="not an anchor set"):
        load_anchor_set(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_anchor_set(tmp_path / "nope")


# ------------------------------------------------------------------------------ process split
def test_two_shards_in_process(tmp_path, reference):
    out = tmp_path / "set"
    gens = []
    for rank in (0, 1):
        summary, gen = run(out, process_index=rank, num_processes=2)
        gens.append(gen)
        assert summary["assigned"] == 6 and summary["generated"] == 6
        assert summary["complete"] is None  # unknown without a barrier
    assert not (out / "manifest.jsonl").exists()
    keys = []
    for rank in (0, 1):
        rows = [json.loads(line) for line in (out / f"manifest.{rank}.jsonl").read_text().splitlines()]
        keys += [(r["class_index"], r["k"]) for r in rows]
        assert all((r["class_index"] * PER_CLASS + r["k"]) % 2 == rank for r in rows)
    assert sorted(keys) == [(c, k) for c in range(3) for k in range(PER_CLASS)]
    assert_same(out, reference)


# ------------------------------------------------------------------------------ folder generator
def make_folder(root, counts, size=(10, 12)):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"img{i:02d}.png")
    return root


def test_folder_generator_imports_in_sorted_order(tmp_path):
    root = make_folder(tmp_path / "src", {"cat": 3, "dog": 2})
    Image.fromarray(np.full((10, 12), 7, np.uint8), "L").save(root / "dog" / "a_gray.png")
    (root / "dog" / "notes.txt").write_text("x")
    gen = FolderGenerator(root=str(root))
    out = tmp_path / "set"
    summary = generate_anchor_set(gen, ["cat", "dog"], 2, out)
    assert summary["complete"]
    ds, rows = load_anchor_set(out, with_manifest=True, verify=True)
    assert ds.images.shape == (4, 10, 12, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[0], np.asarray(Image.open(root / "cat" / "img00.png")))
    np.testing.assert_array_equal(ds.images[2], np.full((10, 12, 3), 7, np.uint8))  # "a_gray" first
    assert [r["source"] for r in rows] == ["cat/img00.png", "cat/img01.png", "dog/a_gray.png",
                                           "dog/img00.png"]
    resized = FolderGenerator(root=str(root), size=6).generate_one(0, "cat", 1)
    assert resized.shape == (6, 6, 3)


def test_folder_generator_class_mismatch(tmp_path):
    root = make_folder(tmp_path / "src", {"cat": 2, "dog": 2, "cow": 2})
    gen = FolderGenerator(root=str(root))
    with pytest.raises(InputError, match=r"missing class folders: 'bird'.*not requested: 'cow'"):
        generate_anchor_set(gen, ["cat", "dog", "bird"], 1, tmp_path / "set")
    assert not (tmp_path / "set").exists()
    with pytest.raises(InputError, match="not found"):
        FolderGenerator(root=str(tmp_path / "nope"))


def test_folder_generator_too_few_images(tmp_path):
    root = make_folder(tmp_path / "src", {"cat": 3, "dog": 1})
    gen = FolderGenerator(root=str(root))
    with pytest.raises(InputError, match=r"fewer than per_class=2.*'dog' has 1"):
        generate_anchor_set(gen, ["cat", "dog"], 2, tmp_path / "set")
    assert not (tmp_path / "set").exists()
    with pytest.raises(InputError, match="'dog' has 1 images"):
        gen.generate(["cat", "dog"], 2)


def test_folder_generator_mixed_sizes_need_size(tmp_path):
    root = make_folder(tmp_path / "src", {"cat": 1, "dog": 1})
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "dog" / "small.png")
    with pytest.raises(InputError, match="differ in size.*pass size"):
        FolderGenerator(root=str(root)).prepare(["cat", "dog"])
    ds = FolderGenerator(root=str(root), size=8).generate(["cat", "dog"], 1)
    assert ds.images.shape == (2, 8, 8, 3)


# ------------------------------------------------------------------------------ class lists
def test_parse_class_list(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\ncat\n\n  dog  \nhot dog  # a food\n")
    assert parse_class_list(str(f)) == ["cat", "dog", "hot dog"]
    assert parse_class_list(f) == ["cat", "dog", "hot dog"]
    assert parse_class_list("cat, dog,bird") == ["cat", "dog", "bird"]
    assert parse_class_list("cat") == ["cat"]
    assert parse_class_list("cifar10") == CIFAR10_CLASSES
    assert parse_class_list("digits") == [str(i) for i in range(10)]
    c100 = parse_class_list("CIFAR100")
    assert len(c100) == 100 == len(set(c100)) and c100 == sorted(c100)
    assert c100[:3] == ["apple", "aquarium_fish", "baby"] and c100[-1] == "worm"


@pytest.mark.parametrize("text, message", [
    ("cat,dog,cat", r"duplicate class names: 'cat' \(position 1 and position 3\)"),
    ("cat,,dog", "empty class name at position 2"),
    ("cat,dog,", "empty class name at position 3"),
    ("missing/classes.txt", "class list file not found"),
])
def test_parse_class_list_errors(text, message):
    with pytest.raises(InputError, match=message):
        parse_class_list(text)


def test_parse_class_list_file_errors(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("cat\ndog\n# x\ncat\n")
    with pytest.raises(InputError, match=r"'cat' \(line 1 and line 4\)"):
        parse_class_list(str(f))
    f.write_text("# nothing\n\n")
    with pytest.raises(InputError, match="no class names"):
        parse_class_list(str(f))


_KILL_SCRIPT = """
import sys, time
from synref.anchors.glyph import GlyphGenerator
from synref.anchors.generate import generate_anchor_set

class Slow(GlyphGenerator):
    name = "counting"
    def config(self):
        return {"size": self.size}
    def describe(self, c, name, k, seed=0):
        return {"prompt": f"the digit {name}", "image_seed": seed * 1000 + c * 100 + k,
                "model": "glyph", "steps": 1, "guidance": 0.0, "size": 12}
    def generate_one(self, c, name, k, seed=0):
        time.sleep(0.15)
        return super().generate_one(c, name, k, seed)

generate_anchor_set(Slow(size=12), ["0", "1", "2"], 4, sys.argv[1], batch_size=1)
"""


def test_sigkill_mid_run_then_resume(tmp_path, reference):
    """A real SIGKILL while writing: nothing half-written, nothing lost, resume completes."""
    import subprocess
    import sys
    import time

    out = tmp_path / "set"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out)],
                            env=dict(os.environ, SYNREF_NO_PROGRESS="1"))
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and manifest.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert proc.returncode != 0, "the run finished before it could be killed"
    written = manifest.read_text().count("\n")
    store = AnchorSet.open(out)
    assert 3 <= len(store.present_keys()) < 12
    assert len(store.present_keys()) >= written  # no row lost its image
    for path in out.rglob("*.png"):
        Image.open(path).load()  # every image under its final name is whole
    summary, gen = run(out)
    assert len(gen.items) == 12 - len(store.present_keys()) - len(store.orphans)
    assert_same(out, reference)

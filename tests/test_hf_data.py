"""Hugging Face datasets in (--data: a save_to_disk folder or parquet files, streamed row by row like
image files) and out (synref apply --to datasets). Small datasets built here."""
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")

from synref.apps.apply import run_apply  # noqa: E402
from synref.cli import main  # noqa: E402
from synref.data import load_dataset, load_digits_dataset  # noqa: E402
from synref.data import hf  # noqa: E402
from synref.data.stream import PathStream  # noqa: E402
from synref.errors import InputError  # noqa: E402

CLASSES = ["zero", "one <1>", "seven&7"]
datasets.disable_progress_bars()


def png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def digits_rows():
    """90 digits (0, 1, 7; 30 each) as PNG bytes, 20 % filed under the next class."""
    digits = load_digits_dataset()
    rng = np.random.default_rng(0)
    images, labels, truth = [], [], []
    for c, digit in enumerate((0, 1, 7)):
        for i in np.flatnonzero(digits.labels == digit)[:30]:
            images.append(digits.images[i, :, :, 0])
            truth.append(c)
            labels.append(c if rng.random() > 0.2 else (c + 1) % 3)
    return images, np.array(labels), np.array(truth)


def features():
    return datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES),
                              "note": datasets.Value("string")})


def make_dataset(images, labels):
    return datasets.Dataset.from_dict({"img": [{"bytes": png(a), "path": None} for a in images],
                                       "label": [int(x) for x in labels],
                                       "note": [f"n{i}" for i in range(len(labels))]}, features=features())


@pytest.fixture(scope="module")
def saved(digits_rows, tmp_path_factory):
    images, labels, _ = digits_rows
    root = tmp_path_factory.mktemp("hf")
    ds = make_dataset(images, labels)
    ds.save_to_disk(str(root / "ds"))
    datasets.DatasetDict({"train": ds, "test": make_dataset(images[:9], labels[:9])}).save_to_disk(str(root / "dd"))
    pdir = root / "parquet"
    pdir.mkdir()
    ds.select(range(50)).to_parquet(str(pdir / "train-00000-of-00002.parquet"), batch_size=16)
    ds.select(range(50, 90)).to_parquet(str(pdir / "train-00001-of-00002.parquet"), batch_size=16)
    ds.select(range(5)).to_parquet(str(pdir / "test-00000-of-00001.parquet"))
    return root


def test_saved_folder_is_read_lazily_with_its_class_names(saved, digits_rows, monkeypatch):
    images, labels, _ = digits_rows
    ds = load_dataset(str(saved / "ds"))
    assert ds.is_path_backed and ds.class_names == CLASSES and ds.labels.tolist() == labels.tolist()
    assert ds.ids == [str(i) for i in range(90)]
    assert ds.paths[7] == hf.row_ref(str((saved / "ds").resolve()), "img", 7)
    # decoding a batch reads just those rows, and gives the pixels of the dataset
    read = []
    real = hf.ref_image_bytes
    monkeypatch.setattr(hf, "ref_image_bytes", lambda path: read.append(hf.parse_ref(path)[2]) or real(path))
    with PathStream(ds.paths, (8, 8), 1, skip_bad=False, num_workers=2) as stream:
        start, batch, bad = next(stream.batches(10, 20, 4))
    # (the stream decodes a few batches ahead: rows 10..19 at most, never the others)
    assert start == 10 and not bad and {10, 11, 12, 13} <= set(read) <= set(range(10, 20))
    assert np.array_equal(batch[..., 0], np.stack(images[10:14]))


def test_dataset_dict_splits(saved):
    assert len(load_dataset(str(saved / "dd"), split="test")) == 9
    assert len(load_dataset(str(saved / "dd"))) == 90
    with pytest.raises(InputError, match=r"has no 'val' split \(it has: train, test\)"):
        load_dataset(str(saved / "dd"), split="val")
    with pytest.raises(InputError, match="single saved dataset with no 'test' split"):
        load_dataset(str(saved / "ds"), split="test")


def test_parquet_files_by_split_and_row_group(saved, digits_rows):
    images, labels, _ = digits_rows
    folder = saved / "parquet"
    assert pq.ParquetFile(folder / "train-00000-of-00002.parquet").metadata.num_row_groups > 1
    ds = load_dataset(str(folder))
    assert len(ds) == 90 and ds.class_names == CLASSES and ds.labels.tolist() == labels.tolist()
    assert len(load_dataset(str(folder), split="test")) == 5
    one = load_dataset(str(folder / "train-00001-of-00002.parquet"))
    assert len(one) == 40 and one.labels.tolist() == labels[50:].tolist()
    with PathStream(ds.paths, (8, 8), 1, skip_bad=False, num_workers=2) as stream:
        got = np.concatenate([b for _, b, _ in stream.batches(0, 90, 7)])
    assert np.array_equal(got[..., 0], np.stack(images))


def test_columns_and_labels_without_class_label(tmp_path):
    import pyarrow as pa

    table = pa.table({"picture": [png(np.full((4, 4), v, np.uint8)) for v in (0, 80, 160)],
                      "kind": ["dog", "cat", "dog"], "other": [1, 2, 3]})
    pq.write_table(table, tmp_path / "x.parquet")
    with pytest.raises(InputError, match="no Image column and none named image or img; name one with --image-column"):
        load_dataset(str(tmp_path / "x.parquet"))
    ds = load_dataset(str(tmp_path / "x.parquet"), image_column="picture", label_column="kind")
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [1, 0, 1]
    with PathStream(ds.paths, (4, 4), 1, skip_bad=False) as stream:
        assert [int(b[k, 0, 0, 0]) for _, b, _ in stream.batches(0, 3, 3) for k in range(3)] == [0, 80, 160]
    with pytest.raises(InputError, match="--label-column 'nope'.*has no such column"):
        load_dataset(str(tmp_path / "x.parquet"), image_column="picture", label_column="nope")
    with pytest.raises(InputError, match="--image-column applies to a Hugging Face dataset"):
        load_dataset("digits", image_column="picture")


def test_unlabelled_rows_are_named(tmp_path):
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png(np.zeros((4, 4), np.uint8)), "path": None}] * 3,
                                     "label": [0, -1, 1]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.ClassLabel(names=["a", "b"])}))
    ds.save_to_disk(str(tmp_path / "u"))
    with pytest.raises(InputError, match="row 1 has label -1, outside the 2 classes"):
        load_dataset(str(tmp_path / "u"))


def test_feature_cache_key_follows_the_saved_data(saved, digits_rows, tmp_path):
    from synref.features.base import images_hash

    images, labels, _ = digits_rows
    copy = tmp_path / "ds"
    make_dataset(images, labels).save_to_disk(str(copy))
    from synref.data.decode import decode_image

    first = images_hash(load_dataset(str(copy)))
    assert images_hash(load_dataset(str(copy))) == first
    assert np.array_equal(decode_image(load_dataset(str(copy)).paths[0], None, 1)[..., 0], images[0])
    make_dataset(images[::-1], labels).save_to_disk(str(tmp_path / "ds2"))
    import shutil

    shutil.rmtree(copy)
    shutil.copytree(tmp_path / "ds2", copy)
    assert images_hash(load_dataset(str(copy))) != first
    # the rows read are the new ones (the open reader of the old files is not reused)
    assert np.array_equal(decode_image(load_dataset(str(copy)).paths[0], None, 1)[..., 0], images[-1])


@pytest.fixture(scope="module")
def refined(saved, digits_rows, tmp_path_factory):
    """A results folder over the saved dataset as synref refine writes it (rows as references)."""
    from review_helpers import write_results

    _, labels, truth = digits_rows
    out = tmp_path_factory.mktemp("refined") / "out"
    rng = np.random.default_rng(3)
    scores = (np.eye(3)[truth] * 0.7 + rng.random((90, 3)) * 0.3).astype(np.float32)
    scores /= scores.sum(1, keepdims=True)
    suggested = np.where(scores.max(1) > 0.6, scores.argmax(1), labels)
    write_results(out, given=labels, suggested=suggested, scores=scores, class_names=CLASSES,
                  paths=load_dataset(str(saved / "ds")).paths, ids=[str(i) for i in range(90)],
                  data=str(saved / "ds"))
    return out


@pytest.mark.slow
def test_refine_streams_a_saved_dataset_and_writes_the_review(saved, digits_rows, tmp_path):
    """synref refine on the saved folder, pretrained evidence: rows streamed like files (~35 s)."""
    _, labels, truth = digits_rows
    out = tmp_path / "out"
    args = ["refine", "--data", str(saved / "ds"), "--generate", "--generator", "glyph", "--per-class", "10",
            "--image-size", "32", "--quiet", "--seed", "0", "--out", str(out), "--label-column", "label"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_names"] == CLASSES and summary["num_samples"] == 90 and summary["path_backed"]
    rows = list(csv.DictReader(open(out / "refined_labels.csv", encoding="utf-8")))
    assert [int(r["given_label"]) for r in rows] == labels.tolist()
    assert all(r["path"].startswith("hf:") for r in rows)
    refined = np.array([int(r["suggested_label"]) for r in rows])
    assert (refined == truth).mean() > (labels == truth).mean()
    assert '"sheets":["s00000-' in (out / "review.html").read_text(encoding="utf-8")


def test_review_thumbnails_come_from_the_rows(refined, digits_rows):
    from synref.apps.review import write_review

    images, _, _ = digits_rows
    text = write_review(refined, thumb_px=16).read_text(encoding="utf-8")
    data = json.loads(text[text.index('id="synref-data">') + 17:text.index("</script>")])
    assert data["thumbs"]["sheets"][0] and -1 not in data["items"]["thumb"]
    first = data["items"]["index"][0]
    with Image.open(refined / "review" / data["thumbs"]["sheets"][0]) as sheet:
        tile = np.asarray(sheet.convert("L"), dtype=float)[:16, :16]
    expected = np.asarray(Image.fromarray(images[first]).resize((16, 16), Image.NEAREST), dtype=float)
    assert np.abs(tile - expected).mean() < 25


def test_apply_to_datasets_saved_and_parquet(saved, refined, digits_rows, tmp_path):
    images, labels, _ = digits_rows
    decisions = tmp_path / "d.csv"
    decisions.write_text("index,decision,label\n3,relabel,2\n4,reject,\n", encoding="utf-8")
    summary = run_apply(refined, decisions=decisions, dest=tmp_path / "dest", outputs="datasets")
    final = np.array([int(r["label"]) for r in csv.DictReader(open(tmp_path / "dest" / "labels.csv"))])
    assert final[3] == 2 and final[4] == labels[4]
    out = datasets.load_from_disk(str(tmp_path / "dest" / "datasets"))
    assert out.features["synref_label"].names == CLASSES
    assert out["synref_label"] == final.tolist() and out["label"] == labels.tolist()
    assert out["note"] == [f"n{i}" for i in range(90)]
    assert np.array_equal(np.asarray(out[17]["img"].convert("L")), images[17])
    assert str(tmp_path / "dest" / "datasets") in summary["files"]
    # parquet data: the same, file by file (a results folder pointing at the parquet files)
    presults = tmp_path / "pout"
    presults.mkdir()
    for name in ("refined_labels.csv", "scores.npy"):
        text = (refined / name).read_bytes()
        if name.endswith(".csv"):
            text = text.replace(f"hf:{(saved / 'ds').resolve()}::img[".encode(), b"hf:X::img[")
        (presults / name).write_bytes(text)
    summary_json = json.loads((refined / "summary.json").read_text())
    summary_json["data"] = str(saved / "parquet")
    (presults / "summary.json").write_text(json.dumps(summary_json))
    run_apply(presults, decisions=decisions, dest=tmp_path / "pdest", outputs="datasets")
    files = sorted((tmp_path / "pdest" / "datasets").iterdir())
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    back = datasets.Dataset.from_parquet([str(f) for f in files])
    assert back["synref_label"] == final.tolist() and back.features["synref_label"].names == CLASSES
    assert back["note"] == [f"n{i}" for i in range(90)]


def test_apply_tree_writes_the_rows_images(refined, digits_rows, tmp_path):
    images, _, _ = digits_rows
    run_apply(refined, dest=tmp_path / "dest", outputs="manifest,tree")
    manifest = list(csv.DictReader(open(tmp_path / "dest" / "manifest.csv", encoding="utf-8")))
    assert len(manifest) == 90
    for k in (0, 45, 89):
        assert np.array_equal(np.asarray(Image.open(manifest[k]["path"])), images[k])

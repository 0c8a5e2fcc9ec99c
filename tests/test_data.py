"""Loaders in synref.data: digits, CIFAR pickles, image folders, CSV manifests, label files."""
from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synref.data import (
    LabeledImages,
    load_cifar,
    load_csv_manifest,
    load_dataset,
    load_digits_dataset,
    load_image_folder,
    load_labels_file,
    materialize,
    split_indices,
)
from synref.errors import InputError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def raises_one_line(*needles: str):
    """pytest.raises(InputError) whose message is one line containing every needle."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(InputError)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            msg = str(self.info.value)
            assert "\n" not in msg, msg
            for needle in needles:
                assert str(needle) in msg, f"{needle!r} not in {msg!r}"
            return handled

    return _Check()


# ----------------------------------------------------------------------------- pickles
class _Py2Pickler(pickle._Pickler):
    """Writes protocol-2 pickles the way Python 2 did (str as BINSTRING, numpy.core globals),
    i.e. byte-for-byte the format of the official cifar-*-python archives."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _dump(obj, path: Path, style: str) -> None:
    if style == "py2":  # official archives: Python 2, protocol 2, numpy.core.multiarray
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        data = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"numpy.core.multiarray" in data or b"numpy" not in data
    elif style == "py3":  # e.g. ../shared/tools/cifar10_python_from_jpeg.py: protocol 4, str keys
        data = pickle.dumps(obj, protocol=4)
    elif style == "bytes":  # bytes keys and names, as a loader with encoding="bytes" shows them
        def enc(x):
            if isinstance(x, str):
                return x.encode("latin1")
            if isinstance(x, dict):
                return {enc(k): enc(v) for k, v in x.items()}
            if isinstance(x, list):
                return [enc(v) for v in x]
            return x
        data = pickle.dumps(enc(obj), protocol=4)
    else:
        raise AssertionError(style)
    path.write_bytes(data)


def _rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): red plane, green plane, blue plane."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def make_cifar10(parent: Path, style: str = "py2", per_batch: int = 3, n_test: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = rng.integers(0, 256, (5 * per_batch, 32, 32, 3), dtype=np.uint8)
    train_labels = rng.integers(0, 10, 5 * per_batch)
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        _dump({"batch_label": f"training batch {b + 1} of 5", "labels": train_labels[sl].tolist(),
               "data": _rows(train[sl]),
               "filenames": [f"img_{i}.png" for i in range(sl.start, sl.stop)]},
              folder / f"data_batch_{b + 1}", style)
    test = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    test_labels = rng.integers(0, 10, n_test)
    _dump({"batch_label": "testing batch 1 of 1", "labels": test_labels.tolist(), "data": _rows(test),
           "filenames": [f"t_{i}.png" for i in range(n_test)]}, folder / "test_batch", style)
    _dump({"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072},
          folder / "batches.meta", style)
    return folder, (train, train_labels), (test, test_labels)


def make_cifar100(parent: Path, style: str = "py2", n_train: int = 6, n_test: int = 3, seed: int = 1):
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = [f"fine{i:02d}" for i in range(100)]
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 100, n)
        _dump({"filenames": [f"{split}_{i}.png" for i in range(n)], "batch_label": f"{split} batch",
               "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
               "data": _rows(images)}, folder / split, style)
        out[split] = (images, labels)
    _dump({"fine_label_names": fine, "coarse_label_names": [f"coarse{i}" for i in range(20)]},
          folder / "meta", style)
    return folder, fine, out


class _Evil:
    """Unpickling this runs ``touch marker``, unless the unpickler refuses os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------ digits
def test_digits_dataset():
    from sklearn.datasets import load_digits

    ds = load_digits_dataset()
    ref = load_digits()
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, ref.target)
    assert ds.class_names == [str(i) for i in range(10)]
    assert ds.ids[0] == "digits-0" and ds.ids[-1] == "digits-1796"
    assert np.array_equal(ds.images[..., 0], np.rint(ref.images * 255 / 16).astype(np.uint8))
    for v in range(17):  # the documented mapping, Python's round
        mask = ref.images == v
        if mask.any():
            assert (ds.images[..., 0][mask] == round(v * 255 / 16)).all()
    assert ds.images.max() == 255 and ds.images.min() == 0


# ------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("style", ["py2", "py3", "bytes"])
def test_cifar10_layout_official_order(tmp_path, style):
    folder, (train, train_labels), (test, test_labels) = make_cifar10(tmp_path, style)
    for root in (tmp_path, folder):  # parent or the layout folder itself
        ds = load_cifar(root)
        assert ds.images.shape == (15, 32, 32, 3) and ds.images.dtype == np.uint8
        assert np.array_equal(ds.images, train)  # batches 1..5 in order, planes -> HWC
        assert np.array_equal(ds.labels, train_labels) and ds.labels.dtype == np.int64
        assert ds.class_names == CIFAR10_NAMES
        assert ds.ids[:2] == ["cifar10-train-0", "cifar10-train-1"]
        assert ds.paths is None
    ts = load_cifar(tmp_path, split="test")
    assert np.array_equal(ts.images, test) and np.array_equal(ts.labels, test_labels)
    assert ts.ids[0] == "cifar10-test-0"


@pytest.mark.parametrize("style", ["py2", "bytes"])
def test_cifar100_layout(tmp_path, style):
    folder, fine, data = make_cifar100(tmp_path, style)
    for root in (tmp_path, folder):
        ds = load_cifar(root)
        assert ds.class_names == fine and ds.num_classes == 100
        assert np.array_equal(ds.images, data["train"][0])
        assert np.array_equal(ds.labels, data["train"][1])  # fine labels, not coarse
    ts = load_cifar(folder, split="test")
    assert np.array_equal(ts.images, data["test"][0]) and ts.ids[0] == "cifar100-test-0"


def test_cifar_malicious_pickle_is_refused_and_not_executed(tmp_path):
    folder, *_ = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    # a whole-file payload
    (folder / "data_batch_3").write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with raises_one_line(str(folder / "data_batch_3"), "system"):
        load_cifar(tmp_path)
    # a payload nested in an otherwise valid dict, in the meta file
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {"label_names": CIFAR10_NAMES, "x": _Evil(marker)}, protocol=4))
    with raises_one_line(str(folder / "batches.meta")):
        load_cifar(tmp_path)
    # other classic gadgets
    for payload in (b"cbuiltins\neval\n(S'1'\ntR.", b"c__builtin__\neval\n(S'1'\ntR.",
                    pickle.dumps({"labels": [0], "data": bytearray(3072)}, protocol=2)):
        (folder / "batches.meta").write_bytes(payload)
        with raises_one_line(str(folder / "batches.meta"), "refusing"):
            load_cifar(tmp_path)
    assert not marker.exists()


def test_cifar_bad_layouts(tmp_path):
    folder, *_ = make_cifar10(tmp_path / "a")
    batch4 = (folder / "data_batch_4").read_bytes()
    (folder / "data_batch_4").unlink()
    with raises_one_line(str(folder / "data_batch_4"), "missing"):
        load_cifar(folder)
    assert load_cifar(folder, split="test").images.shape[0] == 4  # test split still fine
    with raises_one_line("split", "'val'"):
        load_cifar(folder, split="val")
    with raises_one_line(str(tmp_path / "nowhere")):
        load_cifar(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with raises_one_line(str(tmp_path / "empty"), "not a CIFAR"):
        load_cifar(tmp_path / "empty")
    # truncated pickle
    (folder / "data_batch_4").write_bytes(batch4)
    data = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_1").write_bytes(data[: len(data) // 2])
    with raises_one_line(str(folder / "data_batch_1")):
        load_cifar(folder, split="train")
    # labels out of range name the file and the sample
    folder2, *_ = make_cifar10(tmp_path / "b", style="py3")
    _dump({"labels": [0, 10, 1], "data": np.zeros((3, 3072), np.uint8)}, folder2 / "data_batch_2", "py3")
    with raises_one_line(str(folder2 / "data_batch_2"), "sample 1"):
        load_cifar(folder2)


@pytest.mark.skipif(not os.environ.get("SYNREF_CIFAR10_DIR"), reason="SYNREF_CIFAR10_DIR not set")
def test_real_cifar10():
    root = os.environ["SYNREF_CIFAR10_DIR"]
    train = load_cifar(root)
    test = load_cifar(root, split="test")
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.class_names == CIFAR10_NAMES
    assert np.bincount(train.labels, minlength=10).tolist() == [5000] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # the official order
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train_labels.npy"
    if shared.is_file():
        assert np.array_equal(train.labels, np.load(shared))


# ------------------------------------------------------------------------ image folders
def _save(path: Path, img: Image.Image, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


@pytest.fixture
def folder(tmp_path):
    """cat: 2 RGB PNG + nested PNG + JPEG; dog: RGBA, CMYK JPEG, GIF, a larger PNG;
    gray: L PNG, 16-bit PNG. Most images 10x12 (H x W)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    arrays = {}

    def rgb(name, h=10, w=12):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arrays[name] = a
        return Image.fromarray(a, "RGB")

    _save(root / "cat" / "b.png", rgb("cat/b.png"))
    _save(root / "cat" / "a.png", rgb("cat/a.png"))
    _save(root / "cat" / "sub" / "c.PNG", rgb("cat/sub/c.PNG"))
    yy, xx = np.mgrid[0:10, 0:12]
    smooth = np.stack([yy * 20, xx * 15, 200 - yy * 10], axis=-1).astype(np.uint8)
    arrays["cat/d.JPG"] = smooth
    _save(root / "cat" / "d.JPG", Image.fromarray(smooth, "RGB"), quality=95)
    (root / "cat" / "notes.txt").write_text("not an image")
    _save(root / ".hidden" / "x.png", rgb(".hidden/x.png"))
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0      # transparent -> black
    rgba[5:, :, 3] = 255    # opaque -> the colour
    rgba[5, 0, 3] = 128
    arrays["dog/rgba.png"] = rgba
    _save(root / "dog" / "rgba.png", Image.fromarray(rgba, "RGBA"))
    _save(root / "dog" / "cmyk.jpg", Image.new("CMYK", (12, 10), (0, 255, 0, 0)), quality=95)
    _save(root / "dog" / "pal.gif", rgb("dog/pal.gif").quantize(16))
    _save(root / "dog" / "wide.png", rgb("dog/wide.png", 20, 24))
    gray = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    arrays["gray/l.png"] = gray
    _save(root / "gray" / "l.png", Image.fromarray(gray, "L"))
    deep = (rng.integers(0, 65536, (10, 12))).astype(np.uint16)
    arrays["gray/deep16.png"] = deep
    _save(root / "gray" / "deep16.png", Image.fromarray(deep))  # mode I;16
    return root, arrays


EXPECTED_IDS = ["cat/a.png", "cat/b.png", "cat/d.JPG", "cat/sub/c.PNG",
                "dog/cmyk.jpg", "dog/pal.gif", "dog/rgba.png", "dog/wide.png",
                "gray/deep16.png", "gray/l.png"]


def test_image_folder_listing(folder):
    root, _ = folder
    ds = load_image_folder(root)
    assert ds.is_path_backed and ds.images is None
    assert ds.class_names == ["cat", "dog", "gray"]
    assert ds.ids == EXPECTED_IDS
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2] and ds.labels.dtype == np.int64
    assert ds.paths == [str(root / i) for i in EXPECTED_IDS]
    assert "not decoded" in repr(ds)


def test_materialize_modes_and_mixed_sizes(folder):
    root, arrays = folder
    ds = load_image_folder(root)
    with pytest.warns(UserWarning, match="1 of 10 images are not 10x12"):
        m = materialize(ds)
    assert m.images.shape == (10, 10, 12, 3) and m.images.dtype == np.uint8
    assert m.paths == ds.paths and m.ids == ds.ids and np.array_equal(m.labels, ds.labels)
    img = dict(zip(m.ids, m.images))
    for name in ("cat/a.png", "cat/b.png", "cat/sub/c.PNG"):
        assert np.array_equal(img[name], arrays[name])  # exact PNG round trip
    assert np.abs(img["cat/d.JPG"].astype(int) - arrays["cat/d.JPG"]).mean() < 8  # lossy
    rgba = arrays["dog/rgba.png"]
    assert (img["dog/rgba.png"][:5] == 0).all()  # transparent over black
    assert np.array_equal(img["dog/rgba.png"][6:], rgba[6:, :, :3])
    assert np.abs(img["dog/rgba.png"][5, 0].astype(int) - rgba[5, 0, :3].astype(int) * 128 / 255).max() <= 1
    assert np.abs(img["dog/cmyk.jpg"].astype(int) - [255, 0, 255]).max() <= 8  # magenta
    gray = arrays["gray/l.png"]
    assert np.array_equal(img["gray/l.png"], np.repeat(gray[..., None], 3, axis=2))
    expect16 = np.rint(arrays["gray/deep16.png"] / 257.0).astype(np.uint8)  # scaled, not clipped
    assert np.array_equal(img["gray/deep16.png"][..., 0], expect16)
    assert img["dog/wide.png"].shape == (10, 12, 3)
    with Image.open(root / "dog" / "pal.gif") as pal:
        assert np.array_equal(img["dog/pal.gif"], np.asarray(pal.convert("RGB")))


def test_materialize_applies_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    _save(tmp_path / "c" / "r.jpg", Image.new("RGB", (8, 4), (200, 10, 10)), exif=exif)
    _save(tmp_path / "c" / "s.png", Image.new("RGB", (4, 8), (10, 200, 10)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both are 8x4 once rotated: no mixed-size warning
        m = materialize(load_image_folder(tmp_path))
    assert m.images.shape == (2, 8, 4, 3)


def test_materialize_size_channels_and_auto_gray(folder):
    root, arrays = folder
    ds = load_image_folder(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = materialize(ds, size=(6, 5), channels=1)
        assert small.images.shape == (10, 6, 5, 1)
        gray = load_image_folder(root).subset([8, 9])  # L and 16-bit only -> 1 channel
        g = materialize(gray)
        assert g.images.shape == (2, 10, 12, 1)
        assert np.array_equal(g.images[1, ..., 0], arrays["gray/l.png"])
        sized = load_image_folder(root, size=8)
        assert not sized.is_path_backed and sized.images.shape == (10, 8, 8, 3)
        # array-backed: a no-op, or a conversion
        assert materialize(g) is g
        rgb = materialize(g, channels=3, size=(4, 4))
        assert rgb.images.shape == (2, 4, 4, 3) and rgb.ids == g.ids
    with raises_one_line("channels"):
        materialize(ds, channels=2)


def test_image_folder_bad_inputs(tmp_path, folder):
    root, _ = folder
    with raises_one_line(str(tmp_path / "missing")):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with raises_one_line(str(tmp_path / "empty"), "no class sub-folders"):
        load_image_folder(tmp_path / "empty")
    (root / "zebra").mkdir()
    (root / "zebra" / "readme.md").write_text("x")
    with raises_one_line(str(root / "zebra"), "no images"):
        load_image_folder(root)
    (root / "zebra" / "readme.md").unlink()
    (root / "zebra").rmdir()
    # truncated PNG and garbage JPEG: decoding names the file
    data = (root / "cat" / "a.png").read_bytes()
    (root / "cat" / "a.png").write_bytes(data[: len(data) // 2])
    ds = load_image_folder(root)
    with raises_one_line(str(root / "cat" / "a.png")):
        materialize(ds, size=(10, 12), channels=3)
    (root / "cat" / "a.png").write_bytes(b"definitely not a PNG")
    with raises_one_line(str(root / "cat" / "a.png")):
        materialize(ds)
    (root / "cat" / "a.png").unlink()
    with raises_one_line(str(root / "cat" / "a.png")):
        materialize(ds, size=4, channels=3)


# ------------------------------------------------------------------------- CSV manifests
def _png(path: Path, value: int, size=(4, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size + (3,), value, np.uint8), "RGB").save(path)


def test_csv_manifest_names_ints_and_roots(tmp_path):
    for i in range(4):
        _png(tmp_path / "img" / f"{i}.png", 10 * i)
    (tmp_path / "m.csv").write_text("path,label,extra\nimg/0.png,dog,x\nimg/1.png,cat,y\n\n"
                                    f"{tmp_path / 'img' / '2.png'},dog,z\n")
    ds = load_csv_manifest(tmp_path / "m.csv")
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [1, 0, 1]
    assert ds.paths[0] == str(tmp_path / "img" / "0.png") and ds.ids[0] == "img/0.png"
    m = materialize(ds)
    assert m.images.shape == (3, 4, 4, 3) and m.images[1, 0, 0, 0] == 10

    # given class names: by name or by index
    (tmp_path / "n.csv").write_text("Label , Path\n2,img/0.png\nbird,img/1.png\n")
    ds = load_csv_manifest(tmp_path / "n.csv", class_names=["bird", "cat", "dog"])
    assert ds.labels.tolist() == [2, 0] and ds.class_names == ["bird", "cat", "dog"]

    # integer labels -> the classes present, in numeric order (issue 23 row 14); root override; id column
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "i.csv").write_text("id,path,label\na,img/3.png,3\nb,img/0.png,0\n")
    ds = load_csv_manifest(sub / "i.csv", root=tmp_path)
    assert ds.class_names == ["0", "3"] and ds.labels.tolist() == [1, 0]
    assert ds.ids == ["a", "b"]


def test_csv_manifest_bad_inputs(tmp_path):
    _png(tmp_path / "a.png", 0)
    csv = tmp_path / "m.csv"
    csv.write_text("file,class\na.png,cat\n")
    with raises_one_line(str(csv), "'path'", "'label'", "file, class"):
        load_csv_manifest(csv)
    csv.write_text("path,label\na.png,cat\na.png,lion\n")
    with raises_one_line(str(csv), "row 2", "line 3", "lion"):
        load_csv_manifest(csv, class_names=["cat", "dog"])
    csv.write_text("path,label\na.png,0\na.png,5\n")
    with raises_one_line(str(csv), "row 2", "5"):
        load_csv_manifest(csv, class_names=["cat", "dog"])
    csv.write_text("path,label\na.png,cat\nb.png,cat\n")
    with raises_one_line(str(csv), "row 2", str(tmp_path / "b.png")):
        load_csv_manifest(csv)
    csv.write_text("path,label\n")
    with raises_one_line(str(csv), "no rows"):
        load_csv_manifest(csv)
    with raises_one_line(str(tmp_path / "nope.csv")):
        load_csv_manifest(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- label files
def test_load_labels_file_formats(tmp_path):
    labels = np.array([0, 2, 1, 2], np.int64)
    np.save(tmp_path / "l.npy", labels)
    (tmp_path / "l.txt").write_text("0\n2\n1\n2\n\n")
    (tmp_path / "l.csv").write_text("index,label\n0,0\n1,2\n2,1\n3,2\n")
    (tmp_path / "m.csv").write_text("0\n2\n1\n2\n")
    for name in ("l.npy", "l.txt", "l.csv", "m.csv"):
        out = load_labels_file(tmp_path / name, num_samples=4, num_classes=3)
        assert out.dtype == np.int64 and out.tolist() == labels.tolist(), name
    assert load_labels_file(tmp_path / "l.npy", num_samples=None, num_classes=None).shape == (4,)


def test_load_labels_file_bad_inputs(tmp_path):
    np.save(tmp_path / "l.npy", np.array([0, 1, 3, 4]))
    with raises_one_line(str(tmp_path / "l.npy"), "4 labels", "5 samples"):
        load_labels_file(tmp_path / "l.npy", num_samples=5, num_classes=3)
    with raises_one_line(str(tmp_path / "l.npy"), "sample 2", "[0, 3)"):
        load_labels_file(tmp_path / "l.npy", num_samples=4, num_classes=3)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with raises_one_line(str(tmp_path / "o.npy")):
        load_labels_file(tmp_path / "o.npy", num_samples=1, num_classes=3)
    (tmp_path / "t.txt").write_text("0\n1\ncat\n")
    with raises_one_line(str(tmp_path / "t.txt"), "line 3", "cat"):
        load_labels_file(tmp_path / "t.txt", num_samples=3, num_classes=3)
    (tmp_path / "t.json").write_text("[]")
    with raises_one_line(str(tmp_path / "t.json")):
        load_labels_file(tmp_path / "t.json", num_samples=0, num_classes=3)
    with raises_one_line(str(tmp_path / "none.npy")):
        load_labels_file(tmp_path / "none.npy", num_samples=0, num_classes=3)


# ------------------------------------------------------------------------------ dispatch
def test_load_dataset_dispatch(tmp_path):
    assert len(load_dataset("digits")) == 1797
    with raises_one_line("digits", "test"):
        load_dataset("digits", split="test")
    make_cifar10(tmp_path / "c10")
    assert load_dataset(str(tmp_path / "c10")).images.shape == (15, 32, 32, 3)
    assert len(load_dataset(str(tmp_path / "c10" / "cifar-10-batches-py"), split="test")) == 4
    make_cifar100(tmp_path / "c100")
    assert load_dataset(str(tmp_path / "c100")).num_classes == 100

    for split, n in (("train", 2), ("test", 1)):
        for cls in ("a", "b"):
            for k in range(n):
                _png(tmp_path / "split" / split / cls / f"{k}.png", k)
    tr = load_dataset(str(tmp_path / "split"))
    te = load_dataset(str(tmp_path / "split"), split="test")
    assert len(tr) == 4 and len(te) == 2 and te.class_names == ["a", "b"] and te.is_path_backed
    with raises_one_line("'val'"):
        load_dataset(str(tmp_path / "split"), split="val")
    plain = load_dataset(str(tmp_path / "split" / "train"))
    assert plain.class_names == ["a", "b"]
    with raises_one_line("test"):
        load_dataset(str(tmp_path / "split" / "train"), split="test")

    (tmp_path / "m.csv").write_text("path,label,split\nsplit/train/a/0.png,a,train\n"
                                    "split/test/b/0.png,b,test\nsplit/test/a/0.png,a,test\n")
    assert len(load_dataset(str(tmp_path / "m.csv"))) == 1
    assert load_dataset(str(tmp_path / "m.csv"), split="test").ids == ["split/test/b/0.png",
                                                                       "split/test/a/0.png"]
    with raises_one_line(str(tmp_path / "missing")):
        load_dataset(str(tmp_path / "missing"))


# -------------------------------------------------------------------------------- splits
def test_split_indices_stratified_deterministic():
    labels = np.repeat(np.arange(4), 25)
    parts = split_indices(labels, fractions=(0.6, 0.2, 0.2), seed=3)
    assert [len(p) for p in parts] == [60, 20, 20]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(100))
    for p in parts:
        assert np.all(np.bincount(labels[p], minlength=4) == len(p) // 4)  # stratified
    again = split_indices(labels, fractions=(0.6, 0.2, 0.2), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = split_indices(labels, fractions=(0.6, 0.2, 0.2), seed=4)
    assert not np.array_equal(parts[0], other[0])
    a, b = split_indices(labels, sizes=(80, 8), seed=0)
    assert len(a) == 80 and len(b) == 8 and not set(a) & set(b)
    assert len(split_indices(labels, sizes=(10, 0), stratify=False)[1]) == 0
    with raises_one_line("fractions"):
        split_indices(labels, fractions=(0.5, 0.2))
    with raises_one_line("stratify=False"):
        split_indices(np.array([0, 0, 0, 1]), sizes=(2, 2))


def test_container_basics():
    ds = LabeledImages(np.zeros((3, 4, 4), np.uint8), [0, 1, 1], ["x", "y"])
    assert ds.images.shape == (3, 4, 4, 1) and ds.ids == ["0", "1", "2"]
    assert "n=3" in repr(ds) and not ds.is_path_backed
    with raises_one_line("sample 2"):
        LabeledImages(np.zeros((3, 4, 4), np.uint8), [0, 1, 2], ["x", "y"])

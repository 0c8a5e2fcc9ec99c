"""Loaders that fill a :class:`LabeledImages`: scikit-learn's digits, the CIFAR python layout
(restricted unpickler), image folders, CSV manifests, and :func:`load_dataset` (a spec string:
``digits``, a CIFAR folder, an image folder or a ``.csv``). Folder and CSV sets are path-backed;
:func:`synref.data.materialize` decodes them.
"""
from __future__ import annotations

import csv
import os
import pickle
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError, one_line
from ..io import check_input_file
from ..validation import check_labels
from .container import LabeledImages
from .decode import IMAGE_EXTENSIONS, is_image_file, materialize

__all__ = ["load_digits_dataset", "load_cifar", "load_image_folder", "load_csv_manifest", "load_dataset",
           "read_csv_rows", "parse_int", "SPLIT_FOLDER_NAMES"]

PathLike = Union[str, "os.PathLike[str]"]
Size = Tuple[int, int]

#: Folder names that :func:`load_dataset` treats as split folders (``root/train/<class>/...``).
SPLIT_FOLDER_NAMES = ("train", "val", "valid", "validation", "test")


# ------------------------------------------------------------------------------ digits
def load_digits_dataset() -> LabeledImages:
    """scikit-learn's bundled handwritten digits: 1797 images ``(1797, 8, 8, 1)`` uint8.

    Pixel values 0..16 are scaled to 0..255 as ``round(v * 255 / 16)``; class names "0".."9",
    ids "digits-<i>". Ships with scikit-learn, nothing is downloaded.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    images = np.clip(images, 0, 255).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return LabeledImages(images=images, labels=labels, class_names=[str(i) for i in range(10)],
                         ids=[f"digits-{i}" for i in range(len(labels))])


# ------------------------------------------------------------------------------- CIFAR
def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the official CIFAR files contain: dicts, lists, str/bytes, ints and
    numpy arrays. Any other global (``os.system``, ``builtins.eval``, ...) is refused."""

    def __init__(self, file, *, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise InputError(
                f"{self._source}: refusing to unpickle {module}.{name} "
                "(a CIFAR file may only hold numpy arrays, lists, strings and numbers)"
            ) from None

    def persistent_load(self, pid):
        raise InputError(f"{self._source}: refusing to unpickle a persistent id")


def _unpickle_cifar(path: Path) -> Dict[str, object]:
    """The dict in one CIFAR pickle, keys as str (bytes keys are decoded as latin-1)."""
    if not path.is_file():
        raise InputError(f"CIFAR file missing: {path}")
    try:
        with open(path, "rb") as handle:
            obj = _CifarUnpickler(handle, source=str(path)).load()
    except InputError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, OSError, ...
        raise InputError(f"{path}: not a readable CIFAR pickle ({one_line(exc)})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict in a CIFAR pickle, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar_field(d: Dict[str, object], key: str, path: Path):
    if key not in d:
        raise InputError(f"{path}: no {key!r} entry (has: {', '.join(sorted(d)) or 'nothing'})")
    return d[key]


def _cifar_names(d: Dict[str, object], key: str, path: Path) -> List[str]:
    names = _cifar_field(d, key, path)
    if not isinstance(names, (list, tuple)) or not names:
        raise InputError(f"{path}: {key!r} must be a non-empty list of class names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    d = _unpickle_cifar(path)
    data = _cifar_field(d, "data", path)
    labels = _cifar_field(d, label_key, path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"{path}: 'data' must be a uint8 (N, 3072) array, got {desc}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: {label_key!r} must be integers ({one_line(exc)})") from None
    if len(labels) != len(data):
        raise InputError(f"{path}: {len(data)} images but {len(labels)} {label_key!r}")
    check_labels(labels, num_classes, what=str(path))
    # rows are 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _find_cifar_layout(root: Path) -> Optional[Tuple[str, Path]]:
    """("cifar10" | "cifar100", layout folder) when ``root`` is or holds a CIFAR python layout."""
    def kind(folder: Path) -> Optional[str]:
        if (folder / "batches.meta").is_file() or folder.name == "cifar-10-batches-py":
            return "cifar10"
        if (folder / "meta").is_file() and folder.name == "cifar-100-python":
            return "cifar100"
        if (folder / "meta").is_file() and (folder / "train").is_file():
            return "cifar100"
        return None

    if not root.is_dir():
        return None
    own = kind(root)
    if own is not None:
        return own, root
    found = [(name, root / sub) for name, sub in (("cifar10", "cifar-10-batches-py"),
                                                  ("cifar100", "cifar-100-python"))
             if (root / sub).is_dir()]
    if len(found) > 1:
        raise InputError(f"{root} holds both cifar-10-batches-py and cifar-100-python; "
                         "point at one of them")
    return found[0] if found else None


def load_cifar(root: PathLike, *, split: str = "train") -> LabeledImages:
    """CIFAR-10 or CIFAR-100 from the official python layout.

    Args:
        root: the ``cifar-10-batches-py`` / ``cifar-100-python`` folder, or its parent.
        split: "train" (batches 1..5 in official order, 50000 images) or "test" (10000).

    Returns:
        LabeledImages with uint8 images ``(N, 32, 32, 3)`` in the official order, CIFAR-10
        ``label_names`` / CIFAR-100 ``fine_label_names`` as class names, ids
        "cifar10-train-<i>" etc. The pickles are read with a restricted unpickler that only
        rebuilds numpy arrays; anything else raises InputError naming the file.
    """
    root = Path(os.path.expanduser(str(root)))
    if not root.exists():
        raise InputError(f"CIFAR folder not found: {root}")
    if split not in ("train", "test"):
        raise InputError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    found = _find_cifar_layout(root)
    if found is None:
        raise InputError(f"{root} is not a CIFAR python layout (no cifar-10-batches-py or "
                         "cifar-100-python folder, no batches.meta or meta file)")
    kind, folder = found
    if kind == "cifar10":
        names = _cifar_names(_unpickle_cifar(folder / "batches.meta"), "label_names",
                             folder / "batches.meta")
        files = ([f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"])
        label_key = "labels"
    else:
        names = _cifar_names(_unpickle_cifar(folder / "meta"), "fine_label_names", folder / "meta")
        files = [split]
        label_key = "fine_labels"
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise InputError(f"CIFAR batch file missing: {folder / missing[0]}")
    parts = [_cifar_batch(folder / f, label_key, len(names)) for f in files]
    images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
    return LabeledImages(images=images, labels=labels, class_names=names,
                         ids=[f"{kind}-{split}-{i}" for i in range(len(labels))])


# ------------------------------------------------------------------------ image folder
def load_image_folder(root: PathLike, *, size: Optional[Union[int, Size]] = None) -> LabeledImages:
    """An ImageFolder-style tree: ``root/<class>/**/<image>``.

    Class names are the sorted sub-folder names (hidden ones skipped); images are files with an
    extension in :data:`IMAGE_EXTENSIONS` (any case), found recursively, class by class, sorted
    by path within a class. Ids are the paths relative to ``root`` ("cat/001.png").

    Returns a path-backed set (``images=None``; decode with :func:`materialize`), or, when
    ``size=(H, W)`` is given, the decoded RGB/L images at that size.
    """
    root = Path(os.path.expanduser(str(root)))
    if not root.exists():
        raise InputError(f"image folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"not a folder: {root}")
    skipped: List[Dict[str, str]] = []
    try:
        class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                            key=lambda p: p.name)
    except OSError as exc:
        raise InputError(f"cannot read folder {root}: {one_line(exc)}") from None
    loops = [p for p in class_dirs if _links_back(p, root)]
    for p in loops:
        skipped.append({"file": str(p), "reason": f"symbolic link back to {os.readlink(p)!r} (a loop into "
                                                  f"the data folder); left out"})
    class_dirs = [p for p in class_dirs if p not in loops]
    if not class_dirs:
        loose = any(is_image_file(p.name) for p in root.iterdir() if p.is_file())
        hint = " (it holds images directly; put them in one sub-folder per class)" if loose else ""
        raise InputError(f"image folder {root} has no class sub-folders{hint}")
    paths: List[str] = []
    ids: List[str] = []
    labels: List[int] = []
    for label, class_dir in enumerate(class_dirs):
        found = _image_files(class_dir, root, skipped)
        if not found:
            raise InputError(f"class folder {class_dir} has no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        found.sort()
        ids.extend(found)
        paths.extend(str(root / rel) for rel in found)
        labels.extend([label] * len(found))
    ds = LabeledImages(images=None, labels=np.asarray(labels, dtype=np.int64),
                       class_names=[p.name for p in class_dirs], paths=paths, ids=ids, skipped=skipped)
    if size is not None:
        ds = materialize(ds, size=size)
    return ds


def _links_back(folder: Path, root: Path) -> bool:
    """Whether ``folder`` is a symbolic link to ``root`` or to a folder holding it (a loop)."""
    if not folder.is_symlink():
        return False
    target = Path(os.path.realpath(folder))
    real_root = Path(os.path.realpath(root))
    return target == real_root or target in real_root.parents


def _image_files(class_dir: Path, root: Path, skipped: List[Dict[str, str]]) -> List[str]:
    """The image files under ``class_dir`` as sorted POSIX paths relative to ``root``. Left out
    and listed in ``skipped`` (``{"file", "reason"}``): hidden files and folders, files of other
    formats (``.heic``, ``.svg``, ...), linked folders (not followed), and named pipes, devices
    and sockets with an image name (reading one would block)."""
    found: List[str] = []
    stack = [class_dir]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            skipped.append({"file": str(folder), "reason": f"cannot read folder: {one_line(exc)}"})
            continue
        for entry in entries:
            if entry.name.startswith("."):
                skipped.append({"file": entry.path, "reason": "hidden file or folder; left out"})
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    continue
                if entry.is_dir():
                    skipped.append({"file": entry.path, "reason": "linked folder (not followed); left out"})
                    continue
                if not is_image_file(entry.name):
                    kind = Path(entry.name).suffix.lower() or "no extension"
                    skipped.append({"file": entry.path, "reason": f"not an image format synref reads ({kind}; "
                                                                  f"it reads {', '.join(IMAGE_EXTENSIONS)}); left out"})
                    continue
                regular = entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))
            except OSError:
                regular = True  # unreadable: decoding names it (or --skip-bad lists it)
            rel = Path(entry.path).relative_to(root).as_posix()
            if regular:
                found.append(rel)
            else:
                skipped.append({"file": str(root / rel),
                                "reason": "not a regular file (a named pipe, device or socket); left out"})
    found.sort()
    return found


# ------------------------------------------------------------------------ CSV manifest
def parse_int(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        return None


def load_csv_manifest(path: PathLike, *, class_names: Optional[Sequence[str]] = None,
                      root: Optional[PathLike] = None, split: Optional[str] = None,
                      check_files: bool = True) -> LabeledImages:
    """A path-backed set from a CSV whose header has ``path`` and ``label`` columns.

    ``label`` is a class name or an integer class index. Relative paths resolve against
    ``root`` or else the CSV's folder. Class names: ``class_names`` when given; else the labels
    present, as strings ("01" and "1" differ), sorted numerically when all are plain integers,
    else as text. An ``id`` column, when present, gives the ids (else the paths as written).
    With ``split``, only rows whose ``split`` column equals it are kept. A row repeating an earlier
    row's path and label is dropped with a warning; one path with two labels (or, with an ``id``
    column, one id for two rows) is an InputError. ``check_files=False`` lists the rows without
    checking that their files exist (what the report does to know the dataset's files). Decode
    with :func:`materialize`.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise InputError(f"CSV manifest not found: {path}")
    base = Path(os.path.expanduser(str(root))) if root is not None else path.parent
    base = Path(os.path.abspath(base))
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [(reader_line, row) for reader_line, row in read_csv_rows(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read CSV manifest {path}: {one_line(exc)}") from None
    if not rows:
        raise InputError(f"CSV manifest {path} is empty")
    header = [h.strip().lower() for h in rows[0][1]]
    missing = [c for c in ("path", "label") if c not in header]
    if split is not None and "split" not in header:
        missing.append("split")
    if missing:
        raise InputError(f"CSV manifest {path} has no {' or '.join(repr(m) for m in missing)} "
                         f"column (its columns: {', '.join(rows[0][1]) or 'none'})")
    col = {name: header.index(name) for name in ("path", "label", "id", "split") if name in header}

    entries: List[Tuple[int, int, str, str, str]] = []  # (row, line, path, label, id)
    for row_no, (line, row) in enumerate(rows[1:], start=1):
        where = f"{path}: row {row_no} (line {line})"
        if len(row) < len(header):
            raise InputError(f"{where}: {len(row)} fields, the header has {len(header)}")
        if split is not None and row[col["split"]].strip() != split:
            continue
        rel = row[col["path"]].strip()
        label = row[col["label"]].strip()
        if not rel:
            raise InputError(f"{where}: empty path")
        if not label:
            raise InputError(f"{where}: empty label")
        full = Path(os.path.expanduser(rel))
        full = full if full.is_absolute() else base / full
        if check_files:
            check_input_file(full, f"{where}: image file")
        ident = row[col["id"]].strip() if "id" in col else rel
        entries.append((row_no, line, str(full), label, ident))
    if not entries:
        which = f" with split {split!r}" if split is not None else ""
        raise InputError(f"CSV manifest {path} has no rows{which}")
    entries = _drop_repeated_rows(path, entries, has_ids="id" in col)

    raw = [e[3] for e in entries]
    if class_names is not None:
        names = [str(c) for c in class_names]
        if not names:
            raise InputError("class_names is empty")
        index = {n: i for i, n in enumerate(names)}
        labels = []
        for row_no, line, _, label, _ in entries:
            if label in index:
                labels.append(index[label])
                continue
            value = parse_int(label)
            if value is None:
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                raise InputError(f"{path}: row {row_no} (line {line}): unknown class {label!r} "
                                 f"(classes: {shown})")
            if not 0 <= value < len(names):
                raise InputError(f"{path}: row {row_no} (line {line}): label {value} outside "
                                 f"[0, {len(names)})")
            labels.append(value)
    else:
        # labels are strings ("01" and "1" are two classes); the classes are the labels present,
        # in numeric order when every label is a plain integer, else in text order
        ints = [parse_int(s) for s in raw]
        plain = all(v is not None and str(v) == s for v, s in zip(ints, raw))
        if plain:
            for (row_no, line, *_), value in zip(entries, ints):
                if value < 0:  # type: ignore[operator]
                    raise InputError(f"{path}: row {row_no} (line {line}): negative label {value}")
        names = sorted(set(raw), key=int) if plain else sorted(set(raw))
        index = {n: i for i, n in enumerate(names)}
        labels = [index[s] for s in raw]
    return LabeledImages(images=None, labels=np.asarray(labels, dtype=np.int64), class_names=names,
                         paths=[e[2] for e in entries], ids=[e[4] for e in entries])


def _drop_repeated_rows(path: Path, entries: List[Tuple[int, int, str, str, str]], *, has_ids: bool
                       ) -> List[Tuple[int, int, str, str, str]]:
    """``entries`` (row, line, full path, label, id) without the rows repeating an earlier row's
    path and label (a warning says how many); a path given two labels, or an id given to two
    paths, raises InputError naming both rows."""
    first: Dict[str, Tuple[int, int, str, str, str]] = {}
    by_id: Dict[str, Tuple[int, int, str, str, str]] = {}
    kept, repeats = [], []
    for entry in entries:
        row_no, line, full, label, ident = entry
        key = os.path.normpath(full)
        seen = first.get(key)
        if seen is not None:
            if seen[3] != label:
                raise InputError(f"{path}: row {row_no} (line {line}) gives {full} the label {label!r}, row {seen[0]} "
                                 f"(line {seen[1]}) gave it {seen[3]!r}; give each image one label")
            repeats.append((row_no, seen[0]))
            continue
        if has_ids and ident in by_id:
            other = by_id[ident]
            raise InputError(f"{path}: row {row_no} (line {line}) repeats the id {ident!r} of row {other[0]} "
                             f"(line {other[1]}) for another file; ids must be unique")
        first[key] = by_id[ident] = entry
        kept.append(entry)
    if repeats:
        warnings.warn(f"{path}: {len(repeats)} row(s) repeat an earlier row's path and label (first: row "
                      f"{repeats[0][0]} repeats row {repeats[0][1]}); each image is used once", UserWarning,
                      stacklevel=3)
    return kept


def read_csv_rows(handle) -> Iterable[Tuple[int, List[str]]]:
    """(line number, fields) for each non-blank CSV row."""
    reader = csv.reader(handle)
    for row in reader:
        if row and any(field.strip() for field in row):
            yield reader.line_num, row

# ----------------------------------------------------------------------------- dispatch
def load_dataset(spec: str, *, split: str = "train", image_column: Optional[str] = None,
                 label_column: Optional[str] = None, check_files: bool = True) -> LabeledImages:
    """A dataset from a short spec.

    - ``"digits"``: :func:`load_digits_dataset` (one set; only ``split="train"``).
    - a folder that is or holds ``cifar-10-batches-py`` / ``cifar-100-python``: :func:`load_cifar`.
    - a ``.csv`` file: :func:`load_csv_manifest` (``split`` selects rows by a ``split`` column
      when there is one).
    - a Hugging Face dataset: a ``save_to_disk`` folder (a DatasetDict: ``split`` picks the split)
      or ``.parquet`` file(s) with an image column (:func:`synref.data.hf.load_hf_dataset`;
      ``image_column`` / ``label_column`` name the columns, only for these).
    - another folder: :func:`load_image_folder`; when its sub-folders are split names
      (train/val/valid/validation/test) the ``split`` one is used.

    Path-backed results (CSV, image folder) still need :func:`materialize`. ``check_files=False``:
    a CSV manifest's rows are listed without checking their files.
    """
    text = str(spec).strip()
    if not text:
        raise InputError("empty dataset spec")
    from .hf import is_hf_dataset, load_hf_dataset

    if is_hf_dataset(text):
        return load_hf_dataset(text, split=split, image_column=image_column, label_column=label_column)
    for option, value in (("--image-column", image_column), ("--label-column", label_column)):
        if value is not None:
            raise InputError(f"{option} applies to a Hugging Face dataset (a save_to_disk folder or parquet "
                             f"files), not --data {text}")
    if text.lower() == "digits":
        if Path(text).exists():
            raise InputError(f"dataset {text!r} is ambiguous: the built-in digits set or the {Path(text).resolve()} "
                             f"here; give ./{text} (or its full path) for yours, or run from another folder for "
                             f"the built-in set")
        if split != "train":
            raise InputError(f"the digits dataset has no {split!r} split; load it whole and use "
                             "split_indices")
        return load_digits_dataset()
    path = Path(os.path.expanduser(text))
    if not path.exists():
        raise InputError(f"dataset not found: {text} (expected 'digits', a folder or a .csv)")
    if not path.is_file() and not path.is_dir():
        raise InputError(f"dataset {text} is not a folder or a regular file (a device, pipe or socket); "
                         f"give 'digits', a folder or a .csv manifest")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise InputError(f"unsupported dataset file {path}; expected a .csv manifest, a .parquet file or a "
                             f"folder")
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                first = next(iter(read_csv_rows(handle)), (0, []))[1]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"cannot read CSV manifest {path}: {one_line(exc)}") from None
        if "split" in [h.strip().lower() for h in first]:
            return load_csv_manifest(path, split=split, check_files=check_files)
        if split != "train":
            raise InputError(f"CSV manifest {path} has no 'split' column, so no {split!r} split")
        return load_csv_manifest(path, check_files=check_files)
    if _find_cifar_layout(path) is not None:
        return load_cifar(path, split=split)
    subdirs = [p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if subdirs and all(s.lower() in SPLIT_FOLDER_NAMES for s in subdirs):
        chosen = [s for s in subdirs if s.lower() == split.lower()]
        if not chosen:
            raise InputError(f"{path} has no {split!r} split folder (it has: {', '.join(sorted(subdirs))})")
        return load_image_folder(path / chosen[0])
    if split != "train":
        raise InputError(f"{path} is a single image folder with no {split!r} split "
                         f"(use {path}/train and {path}/{split} sub-folders)")
    return load_image_folder(path)


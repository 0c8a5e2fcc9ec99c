"""Labelled image sets: one small container and the loaders that fill it.

Images are held as a uint8 array ``(N, H, W, C)`` with C in {1, 3}, or as file paths that
are decoded on demand. Labels are int64 ``(N,)`` in ``[0, len(class_names))``.

Loaders: :func:`load_digits_dataset`, :func:`load_cifar`, :func:`load_image_folder`,
:func:`load_csv_manifest`, :func:`load_dataset` (dispatch on a spec string); :func:`materialize`
decodes path-backed sets; :func:`load_labels_file` reads label files; :func:`split_indices`
makes stratified splits. Every bad input raises InputError with one line naming the culprit.
"""
from __future__ import annotations

import csv
import os
import pickle
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .progress import progress as _progress_bar


def as_image_array(images: Any, what: str = "images") -> np.ndarray:
    """``images`` as a uint8 ``(N, H, W, C)`` array, C in {1, 3} (an ``(N, H, W)`` array gains
    C = 1); anything else raises InputError naming ``what``."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise InputError(f"{what} must be uint8 (N, H, W, C) with C in 1 or 3, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise InputError(f"{what} must be uint8 (N, H, W, C), got dtype {arr.dtype}")
    return arr


@dataclass
class LabeledImages:
    """A labelled image set.

    Attributes:
        images: uint8 ``(N, H, W, C)``, C in {1, 3}; ``None`` when the set is path-backed.
        labels: int64 ``(N,)``, each in ``[0, num_classes)``.
        class_names: the ``C`` class names, index = label.
        paths: ``N`` file paths when the set is path-backed (or remembered for reports).
        ids: ``N`` stable sample ids (defaults to "0".."N-1" or the paths).
    """

    images: Optional[np.ndarray]
    labels: np.ndarray
    class_names: List[str]
    paths: Optional[List[str]] = None
    ids: Optional[List[str]] = field(default=None)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 1:
            raise InputError(f"labels must be 1-D, got shape {self.labels.shape}")
        if self.labels.size and not np.issubdtype(self.labels.dtype, np.integer):
            raise InputError(f"labels must be integers, got dtype {self.labels.dtype}")
        self.labels = self.labels.astype(np.int64, copy=False)
        self.class_names = [str(c) for c in self.class_names]
        n = len(self.labels)
        if self.images is None and self.paths is None:
            raise InputError("a LabeledImages needs images or paths")
        if self.images is not None:
            images = as_image_array(self.images)
            if len(images) != n:
                raise InputError(f"{len(images)} images but {n} labels")
            self.images = images
        if self.paths is not None:
            self.paths = [str(p) for p in self.paths]
            if len(self.paths) != n:
                raise InputError(f"{len(self.paths)} paths but {n} labels")
        if self.ids is None:
            self.ids = list(self.paths) if self.paths is not None else [str(i) for i in range(n)]
        elif len(self.ids) != n:
            raise InputError(f"{len(self.ids)} ids but {n} labels")
        check_labels(self.labels, self.num_classes, what="labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        if self.images is not None:
            what = f"images={self.images.shape}"
        else:
            what = f"paths={len(self.paths or [])} (not decoded)"
        return (f"LabeledImages(n={len(self)}, {what}, num_classes={self.num_classes}, "
                f"class_names={self.class_names[:5]}{'...' if self.num_classes > 5 else ''})")

    @property
    def is_path_backed(self) -> bool:
        """True when the images are still files (``images is None``); see :func:`materialize`."""
        return self.images is None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "LabeledImages":
        """The samples at ``indices`` (a new container; arrays are copied)."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabeledImages(
            images=None if self.images is None else self.images[idx],
            labels=self.labels[idx].copy(),
            class_names=list(self.class_names),
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            ids=[self.ids[i] for i in idx],
        )

    def with_labels(self, labels: np.ndarray) -> "LabeledImages":
        """The same images with other labels (checked against the class count)."""
        labels = np.asarray(labels)
        if labels.shape != self.labels.shape:
            raise InputError(f"{len(labels)} labels given for {len(self)} images")
        return LabeledImages(self.images, labels, list(self.class_names), self.paths, list(self.ids))


def check_labels(labels: np.ndarray, num_classes: int, *, what: str = "labels") -> np.ndarray:
    """Raise InputError naming the first sample whose label is outside ``[0, num_classes)``."""
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{what}: sample {i} has label {labels[i]}, outside [0, {num_classes}) "
            f"({bad.size} such samples)"
        )
    return labels


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

PathLike = Union[str, "os.PathLike[str]"]
Size = Tuple[int, int]

#: Image file extensions picked up by :func:`load_image_folder` (matched case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Folder names that :func:`load_dataset` treats as split folders (``root/train/<class>/...``).
SPLIT_FOLDER_NAMES = ("train", "val", "valid", "validation", "test")

_GRAY_MODES = ("1", "L", "LA", "La", "I", "F") + ("I;16", "I;16L", "I;16B", "I;16N")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _normalize_size(size: Optional[Union[int, Sequence[int]]], what: str = "size") -> Optional[Size]:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be an int or (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"{what} must be positive, got {size!r}")
    return (h, w)


def _check_channels(channels: Optional[int]) -> Optional[int]:
    if channels is not None and channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels!r}")
    return channels


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
        raise InputError(f"{path}: not a readable CIFAR pickle ({_one_line(exc)})") from None
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
        raise InputError(f"{path}: {label_key!r} must be integers ({_one_line(exc)})") from None
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
    try:
        class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                            key=lambda p: p.name)
    except OSError as exc:
        raise InputError(f"cannot read folder {root}: {_one_line(exc)}") from None
    if not class_dirs:
        loose = any(_is_image_file(p.name) for p in root.iterdir() if p.is_file())
        hint = " (it holds images directly; put them in one sub-folder per class)" if loose else ""
        raise InputError(f"image folder {root} has no class sub-folders{hint}")
    paths: List[str] = []
    ids: List[str] = []
    labels: List[int] = []
    for label, class_dir in enumerate(class_dirs):
        found: List[str] = []
        for dirpath, dirnames, filenames in os.walk(class_dir, onerror=None):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(root)
            found.extend((rel_dir / f).as_posix() for f in filenames if _is_image_file(f))
        if not found:
            raise InputError(f"class folder {class_dir} has no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        found.sort()
        ids.extend(found)
        paths.extend(str(root / rel) for rel in found)
        labels.extend([label] * len(found))
    ds = LabeledImages(images=None, labels=np.asarray(labels, dtype=np.int64),
                       class_names=[p.name for p in class_dirs], paths=paths, ids=ids)
    if size is not None:
        ds = materialize(ds, size=size)
    return ds


# ------------------------------------------------------------------------ CSV manifest
def _parse_int(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        return None


def load_csv_manifest(path: PathLike, *, class_names: Optional[Sequence[str]] = None,
                      root: Optional[PathLike] = None, split: Optional[str] = None) -> LabeledImages:
    """A path-backed set from a CSV whose header has ``path`` and ``label`` columns.

    ``label`` is a class name or an integer class index. Relative paths resolve against
    ``root`` or else the CSV's folder. Class names: ``class_names`` when given; else the
    sorted unique labels when any label is not an integer; else "0".."max". An ``id`` column,
    when present, gives the ids (else the paths as written). With ``split``, only rows whose
    ``split`` column equals it are kept. Decode with :func:`materialize`.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise InputError(f"CSV manifest not found: {path}")
    base = Path(os.path.expanduser(str(root))) if root is not None else path.parent
    base = Path(os.path.abspath(base))
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [(reader_line, row) for reader_line, row in _csv_rows(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read CSV manifest {path}: {_one_line(exc)}") from None
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
        if not full.is_file():
            raise InputError(f"{where}: image file not found: {full}")
        ident = row[col["id"]].strip() if "id" in col else rel
        entries.append((row_no, line, str(full), label, ident))
    if not entries:
        which = f" with split {split!r}" if split is not None else ""
        raise InputError(f"CSV manifest {path} has no rows{which}")

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
            value = _parse_int(label)
            if value is None:
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                raise InputError(f"{path}: row {row_no} (line {line}): unknown class {label!r} "
                                 f"(classes: {shown})")
            if not 0 <= value < len(names):
                raise InputError(f"{path}: row {row_no} (line {line}): label {value} outside "
                                 f"[0, {len(names)})")
            labels.append(value)
    else:
        ints = [_parse_int(s) for s in raw]
        if all(v is not None for v in ints):
            for (row_no, line, *_), value in zip(entries, ints):
                if value < 0:
                    raise InputError(f"{path}: row {row_no} (line {line}): negative label {value}")
            names = [str(i) for i in range(max(ints) + 1)]
            labels = ints
        else:
            names = sorted(set(raw))
            index = {n: i for i, n in enumerate(names)}
            labels = [index[s] for s in raw]
    return LabeledImages(images=None, labels=np.asarray(labels, dtype=np.int64), class_names=names,
                         paths=[e[2] for e in entries], ids=[e[4] for e in entries])


def _csv_rows(handle) -> Iterable[Tuple[int, List[str]]]:
    """(line number, fields) for each non-blank CSV row."""
    reader = csv.reader(handle)
    for row in reader:
        if row and any(field.strip() for field in row):
            yield reader.line_num, row


# --------------------------------------------------------------------------- decoding
def _open_image(path: str):
    from PIL import Image

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise InputError(f"image file not found: {path}") from None
    except Exception as exc:  # UnidentifiedImageError, PermissionError, ...
        raise InputError(f"cannot open image {path}: {_one_line(exc)}") from None


def _probe(path: str) -> Tuple[str, Size]:
    """(mode, (H, W) after EXIF rotation) from the file header, without decoding pixels."""
    with _open_image(path) as img:
        try:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
        except Exception as exc:
            raise InputError(f"cannot read image {path}: {_one_line(exc)}") from None
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        return img.mode, (h, w)


def _to_l_or_rgb(img, fmt: Optional[str]):
    """``img`` as mode "L" (single-channel sources) or "RGB"; alpha is composited over black."""
    from PIL import Image

    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16") or fmt == "PNG" or arr.max(initial=0) > 255:
            arr = np.clip(arr, 0, 65535) / 257.0  # 16-bit: 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        rgb = Image.alpha_composite(black, rgba).convert("RGB")
        return rgb.convert("L") if mode in ("LA", "La") else rgb
    return img.convert("RGB")  # P, CMYK, YCbCr, HSV, RGBX, ...


def _resize(img, size: Size):
    from PIL import Image

    h, w = size
    if img.size == (w, h):
        return img
    shrink = w <= img.size[0] and h <= img.size[1]
    resample = Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC
    return img.resize((w, h), resample=resample)


def _decode(path: str, size: Optional[Size], channels: int) -> np.ndarray:
    """One image as uint8 ``(H, W, channels)``; any decoding problem -> InputError naming it."""
    from PIL import ImageOps

    with _open_image(path) as img:
        try:
            img.load()
            fmt = img.format
            img = ImageOps.exif_transpose(img)
            img = _to_l_or_rgb(img, fmt)
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None:
                img = _resize(img, size)
            arr = np.asarray(img, dtype=np.uint8)
        except InputError:
            raise
        except Exception as exc:  # truncated / corrupt data, unsupported mode, ...
            raise InputError(f"cannot decode image {path}: {_one_line(exc)}") from None
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def _convert_array(img: np.ndarray, size: Optional[Size], channels: int) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    pil = pil.convert("L" if channels == 1 else "RGB")
    if size is not None:
        pil = _resize(pil, size)
    arr = np.asarray(pil, dtype=np.uint8)
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def choose_geometry(probed: Sequence[Tuple[str, Size]], size: Optional[Size], channels: Optional[int], *,
                    stacklevel: int = 2) -> Tuple[Size, int]:
    """The working ``(H, W)`` and channels for images whose headers gave ``(mode, (H, W))``:
    channels 1 when every image is single-channel, else 3; the most common size, with a
    UserWarning when sizes differ. Given ``size`` / ``channels`` are kept."""
    if channels is None:
        channels = 1 if all(mode in _GRAY_MODES for mode, _ in probed) else 3
    if size is None:
        counts = Counter(hw for _, hw in probed)
        size = counts.most_common(1)[0][0]
        if len(counts) > 1:
            odd = len(probed) - counts[size]
            seen = ", ".join(f"{h}x{w}" for (h, w), _ in counts.most_common(4))
            warnings.warn(
                f"{odd} of {len(probed)} images are not {size[0]}x{size[1]} (sizes seen: {seen}"
                f"{', ...' if len(counts) > 4 else ''}); resizing all to {size[0]}x{size[1]}, "
                "the most common size; pass size=(H, W) to choose", UserWarning, stacklevel=stacklevel + 1)
    return (int(size[0]), int(size[1])), int(channels)


def materialize(ds: LabeledImages, *, size: Optional[Union[int, Size]] = None,
                channels: Optional[int] = None, progress: bool = True, skip_bad: bool = False,
                skipped: Optional[List[Dict[str, str]]] = None) -> LabeledImages:
    """An array-backed copy of ``ds``: images uint8 ``(N, H, W, C)``; labels, ids, paths kept.

    Path-backed images are decoded with Pillow: EXIF rotation applied; palette, CMYK, YCbCr,
    1-bit, 16-bit (scaled, not clipped) and float modes converted; alpha composited over black.
    ``channels``: 3 (RGB), 1 (L), or None = 1 when every image is single-channel, else 3.
    ``size=(H, W)`` resizes every image (LANCZOS when shrinking, BICUBIC otherwise); when None
    and the sizes differ, all are resized to the most common size, with a UserWarning.
    An array-backed ``ds`` is returned as is unless ``size``/``channels`` ask for a change.
    A corrupt, truncated or unreadable file raises InputError naming it; with ``skip_bad`` it is
    left out instead and ``{"file", "reason"}`` is appended to ``skipped`` (if given).
    """
    hw = _normalize_size(size)
    channels = _check_channels(channels)
    n = len(ds)
    enabled = None if progress else False

    if ds.images is not None:
        imgs = ds.images
        want_c = channels or imgs.shape[-1]
        if (hw is None or imgs.shape[1:3] == hw) and want_c == imgs.shape[-1]:
            return ds
        out_hw = hw or imgs.shape[1:3]
        out = np.empty((n,) + tuple(out_hw) + (want_c,), dtype=np.uint8)
        for i in _progress_bar(range(n), desc="converting images", total=n, unit="img",
                               enabled=enabled):
            out[i] = _convert_array(imgs[i], hw, want_c)
        return LabeledImages(out, ds.labels.copy(), list(ds.class_names),
                             None if ds.paths is None else list(ds.paths), list(ds.ids))

    paths = list(ds.paths or [])
    if n == 0:
        raise InputError("cannot materialize an empty image set")
    bad: Dict[int, str] = {}

    def attempt(i: int, fn):
        if not skip_bad:
            return fn(paths[i])
        try:
            return fn(paths[i])
        except InputError as exc:
            bad[i] = str(exc)
            return None

    if hw is None or channels is None:
        modes: List[str] = []
        sizes: List[Size] = []
        for i in _progress_bar(range(n), desc="reading image headers", total=n, unit="img",
                               enabled=enabled if n >= 2000 else False):
            probed = attempt(i, _probe)
            if probed is not None:
                modes.append(probed[0])
                sizes.append(probed[1])
        if not sizes:
            raise InputError(f"none of the {n} images could be read (first: {bad[min(bad)]})")
        hw, channels = choose_geometry(list(zip(modes, sizes)), hw, channels, stacklevel=2)
    out = np.empty((n,) + tuple(hw) + (channels,), dtype=np.uint8)
    for i in _progress_bar(range(n), desc="decoding images", total=n, unit="img", enabled=enabled):
        if i in bad:
            continue
        decoded = attempt(i, lambda path: _decode(path, hw, channels))
        if decoded is not None:
            out[i] = decoded
    if not bad:
        return LabeledImages(out, ds.labels.copy(), list(ds.class_names), paths, list(ds.ids))
    if skipped is not None:
        skipped.extend({"file": paths[i], "reason": reason} for i, reason in sorted(bad.items()))
    keep = np.array([i for i in range(n) if i not in bad], dtype=np.int64)
    if keep.size == 0:
        raise InputError(f"none of the {n} images could be read (first: {bad[min(bad)]})")
    return LabeledImages(out[keep], ds.labels[keep].copy(), list(ds.class_names),
                         [paths[i] for i in keep], [ds.ids[i] for i in keep])


# ------------------------------------------------------------------------- label files
def load_labels_file(path: PathLike, *, num_samples: Optional[int],
                     num_classes: Optional[int]) -> np.ndarray:
    """Labels from ``.npy`` (integer ``(N,)``, no pickles) or ``.txt``/``.csv`` (one integer per
    line; a ``.csv`` may have a header, and then its ``label`` column is used).

    Returns int64 ``(N,)``. ``num_samples`` / ``num_classes`` = None skip that check. A length
    mismatch or a label outside ``[0, num_classes)`` raises InputError naming the file.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise InputError(f"labels file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"cannot read labels file {path}: {_one_line(exc)}") from None
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise InputError(f"{path}: labels must be a 1-D array, got shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.floating):
            bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
            if bad.size:
                raise InputError(f"{path}: sample {bad[0]} has non-integer label {arr[bad[0]]}")
        elif not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
            raise InputError(f"{path}: labels must be integers, got dtype {arr.dtype}")
        labels = arr.astype(np.int64)
    elif suffix in (".txt", ".csv"):
        labels = _read_text_labels(path, csv_mode=suffix == ".csv")
    else:
        raise InputError(f"{path}: unsupported labels file type {suffix or '(none)'!r}; "
                         "use .npy, .txt or .csv")
    if num_samples is not None and len(labels) != num_samples:
        raise InputError(f"{path}: {len(labels)} labels but the dataset has {num_samples} samples")
    negative = np.flatnonzero(labels < 0)
    if num_classes is not None:
        check_labels(labels, num_classes, what=str(path))
    elif negative.size:
        i = int(negative[0])
        raise InputError(f"{path}: sample {i} has negative label {labels[i]}")
    return labels


def _read_text_labels(path: Path, *, csv_mode: bool) -> np.ndarray:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            if csv_mode:
                rows = [(line, [f.strip() for f in row]) for line, row in _csv_rows(handle)]
            else:
                rows = [(i, [s.strip()]) for i, s in enumerate(handle.read().splitlines(), start=1)
                        if s.strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read labels file {path}: {_one_line(exc)}") from None
    column, width = 0, 1
    if csv_mode and rows and any(_parse_int(f) is None for f in rows[0][1]):
        header = [f.lower() for f in rows[0][1]]
        if len(header) > 1 and "label" not in header:
            raise InputError(f"{path}: header has no 'label' column (its columns: "
                             f"{', '.join(rows[0][1])})")
        column, width = (header.index("label") if len(header) > 1 else 0), len(header)
        rows = rows[1:]
    labels = np.empty(len(rows), dtype=np.int64)
    for k, (line, fields) in enumerate(rows):
        if len(fields) != width:
            raise InputError(f"{path}: line {line}: {len(fields)} fields, expected {width} "
                             "(one label per line, or a header with a 'label' column)")
        value = _parse_int(fields[column])
        if value is None:
            raise InputError(f"{path}: line {line}: {fields[column]!r} is not an integer label")
        labels[k] = value
    return labels


# ----------------------------------------------------------------------------- dispatch
def load_dataset(spec: str, *, split: str = "train") -> LabeledImages:
    """A dataset from a short spec.

    - ``"digits"``: :func:`load_digits_dataset` (one set; only ``split="train"``).
    - a folder that is or holds ``cifar-10-batches-py`` / ``cifar-100-python``: :func:`load_cifar`.
    - a ``.csv`` file: :func:`load_csv_manifest` (``split`` selects rows by a ``split`` column
      when there is one).
    - another folder: :func:`load_image_folder`; when its sub-folders are split names
      (train/val/valid/validation/test) the ``split`` one is used.

    Path-backed results (CSV, image folder) still need :func:`materialize`.
    """
    text = str(spec).strip()
    if not text:
        raise InputError("empty dataset spec")
    if text.lower() == "digits":
        if split != "train":
            raise InputError(f"the digits dataset has no {split!r} split; load it whole and use "
                             "split_indices")
        return load_digits_dataset()
    path = Path(os.path.expanduser(text))
    if not path.exists():
        raise InputError(f"dataset not found: {text} (expected 'digits', a folder or a .csv)")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise InputError(f"unsupported dataset file {path}; expected a .csv manifest or a folder")
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                first = next(iter(_csv_rows(handle)), (0, []))[1]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"cannot read CSV manifest {path}: {_one_line(exc)}") from None
        if "split" in [h.strip().lower() for h in first]:
            return load_csv_manifest(path, split=split)
        if split != "train":
            raise InputError(f"CSV manifest {path} has no 'split' column, so no {split!r} split")
        return load_csv_manifest(path)
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


# ------------------------------------------------------------------------------- splits
def split_indices(labels: np.ndarray, *, fractions: Optional[Sequence[float]] = None,
                  sizes: Optional[Sequence[int]] = None, seed: int = 0,
                  stratify: bool = True) -> List[np.ndarray]:
    """Deterministic (stratified) index splits, e.g. train/val/test.

    Give ``fractions`` (summing to 1) or ``sizes`` (summing to at most N; the rest is left
    out). Returns one sorted int64 index array per part; the parts are disjoint. Stratified
    with sklearn's ``train_test_split``, so class proportions match across parts.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    n = len(labels)
    if (fractions is None) == (sizes is None):
        raise InputError("split_indices needs exactly one of fractions or sizes")
    if fractions is not None:
        fr = np.asarray(fractions, dtype=np.float64)
        if fr.ndim != 1 or fr.size == 0 or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6:
            raise InputError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
        raw = fr * n
        counts = np.floor(raw).astype(np.int64)
        for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
            counts[i] += 1
    else:
        counts = np.asarray(sizes, dtype=np.int64)
        if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or counts.sum() > n:
            raise InputError(f"sizes must be non-negative and sum to at most {n}, got {list(sizes)}")
    pool = np.arange(n, dtype=np.int64)
    parts: List[np.ndarray] = []
    for k, count in enumerate(counts):
        count = int(count)
        if count == 0:
            parts.append(np.empty(0, dtype=np.int64))
            continue
        if count == len(pool):
            parts.append(np.sort(pool))
            pool = pool[:0]
            continue
        try:
            take, pool = train_test_split(pool, train_size=count, test_size=len(pool) - count,
                                          random_state=seed + k,
                                          stratify=labels[pool] if stratify else None)
        except ValueError as exc:
            raise InputError(f"cannot split {len(pool)} samples into {count} + {len(pool) - count}"
                             f"{' stratified' if stratify else ''}: {_one_line(exc)}"
                             f"{' (try stratify=False)' if stratify else ''}") from None
        parts.append(np.sort(take))
    return parts

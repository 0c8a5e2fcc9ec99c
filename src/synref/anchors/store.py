"""Anchor sets on disk: PNG files + an append-only JSONL manifest, resumable and crash-safe.

Layout of an anchor set folder ``DIR``::

    DIR/anchorset.json                       class names, generator name + config, per_class,
                                             seed, created/updated, synref version
    DIR/manifest.jsonl                       one JSON row per image (single-process runs)
    DIR/manifest.<rank>.jsonl                one shard per process (multi-process runs)
    DIR/images/<class_index>_<safe name>/<k>.png
    DIR/.synref-generate.lock                held (flock) by the run writing the set

A manifest row holds ``class_index``, ``class_name``, ``k``, ``file`` (relative to ``DIR``),
``sha256`` and ``bytes`` (the file's; older sets have no ``bytes``) and ``seed``, then the generator's
:meth:`~synref.anchors.base.AnchorGenerator.describe` fields (prompt, image_seed, model, ...).
Loading merges every manifest file, so shards written by several processes form one set.

Crash safety (a run killed at any moment leaves no half-written image and loses none written):

* an image is encoded in memory, written to a hidden temp file in its class folder
  (``.<k>.png.<random>.tmp``), fsynced, ``os.replace``-d onto ``<k>.png`` and the folder fsynced
  (``synref.io.atomic_open(..., fsync_dir=True)``);
* only then is its manifest row appended to the process's own manifest file (one ``write`` of a
  whole line, flushed and fsynced). A line torn by a crash is skipped when read, and the writer
  starts a fresh line after it;
* on open, rows whose file is missing are dropped; image files without a valid row ("orphans":
  the process died between the rename and the row) are re-hashed and adopted, or deleted and
  regenerated when they do not decode; stray temp files are deleted by the process that owns the
  item. Rows never disagree with files silently: when two rows of one image carry different
  hashes, the file is hashed and the matching row wins.

>>> store = AnchorSet.open("anchors/cifar10")          # doctest: +SKIP
>>> anchors = store.load(verify=True)                  # LabeledImages, class-major
>>> anchors, rows = load_anchor_set("anchors/cifar10", with_manifest=True)  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data import LabeledImages
from ..errors import InputError
from ..hashing import hash_file, sha256_bytes, sha256_file
from ..io import atomic_open, json_default, write_json

PathLike = Union[str, os.PathLike]
Key = Tuple[int, int]  # (class_index, k)
Item = Tuple[int, str, int]  # (class_index, class_name, k)

ANCHORSET_FILE = "anchorset.json"
MANIFEST_FILE = "manifest.jsonl"
#: held by the run writing the set (see :func:`synref.anchors.generate.generate_anchor_set`).
LOCK_FILE = ".synref-generate.lock"
IMAGES_DIR = "images"
FORMAT = "synref-anchorset"
FORMAT_VERSION = 1
#: Generator options that do not change the images (ignored when a re-run is compared).
IGNORED_CONFIG_KEYS = ("device", "batch_size")

_MANIFEST_RE = re.compile(r"^manifest(?:\.(\d+))?\.jsonl$")
_IMAGE_RE = re.compile(r"^(\d+)\.png$")
_TEMP_RE = re.compile(r"^\.(\d+)\.png\..*\.tmp$")
_ROW_KEYS = ("class_index", "class_name", "k", "file", "sha256")


# ---------------------------------------------------------------------------- names and files
def safe_name(name: str, max_len: int = 48) -> str:
    """A file-system-safe form of a class name ("sweet pepper/2" -> "sweet_pepper_2")."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return s[:max_len] or "class"


def class_dir_name(class_index: int, class_name: str) -> str:
    return f"{class_index}_{safe_name(class_name)}"


def image_relpath(class_index: int, class_name: str, k: int) -> str:
    """``images/<class_index>_<safe name>/<k>.png`` (POSIX separators, relative to DIR)."""
    return f"{IMAGES_DIR}/{class_dir_name(class_index, class_name)}/{k}.png"


def manifest_name(process_index: int, num_processes: int) -> str:
    """``manifest.jsonl`` for a single process, ``manifest.<rank>.jsonl`` otherwise."""
    return MANIFEST_FILE if num_processes == 1 else f"manifest.{process_index}.jsonl"


def encode_png(img: np.ndarray) -> bytes:
    """uint8 ``(H, W, 1|3)`` (or ``(H, W)``) as PNG bytes (gray "L" or "RGB")."""
    from PIL import Image

    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(f"an anchor image must be uint8 (H, W, 1|3), got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), mode="L" if arr.ndim == 2 else "RGB").save(
        buf, format="PNG")
    return buf.getvalue()


def decode_png(path: PathLike) -> np.ndarray:
    """A stored anchor as uint8 ``(H, W, 1|3)``; InputError naming the file if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"anchor image not found: {path}") from None
    except Exception as exc:  # truncated / corrupt
        raise InputError(f"cannot decode anchor image {path}: {type(exc).__name__}: {exc}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, numpy scalars -> numbers)."""
    return json.loads(json.dumps(obj, default=json_default))


def _short_list(names: Iterable[Any], limit: int = 8) -> str:
    names = list(names)
    text = ", ".join(repr(n) for n in names[:limit])
    return text + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ---------------------------------------------------------------------------- metadata
def make_meta(class_names: Sequence[str], generator_name: str, generator_config: Dict[str, Any],
              per_class: int, seed: int) -> Dict[str, Any]:
    from .. import __version__

    now = _now()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "per_class": int(per_class),
        "seed": int(seed),
        "generator": {"name": generator_name, "config": _jsonable(generator_config)},
        "image_file": "images/<class_index>_<safe class name>/<k>.png",
        "manifest": "manifest.jsonl and/or manifest.<rank>.jsonl, merged",
        "created": now,
        "updated": now,
        "synref_version": __version__,
    }


def read_meta(root: PathLike) -> Dict[str, Any]:
    path = Path(root) / ANCHORSET_FILE
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{root} is not an anchor set (no {ANCHORSET_FILE}); "
                         f"make one with synref generate") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    ok = (isinstance(meta, dict) and meta.get("format") == FORMAT
          and isinstance(meta.get("class_names"), list) and isinstance(meta.get("per_class"), int)
          and isinstance(meta.get("generator"), dict))
    if not ok:
        raise InputError(f"{path} is not a synref anchor-set description")
    return meta


def _comparable_config(config: Dict[str, Any]) -> Dict[str, Any]:
    cfg = _jsonable(config or {})
    return {k: v for k, v in cfg.items() if k not in IGNORED_CONFIG_KEYS}


def check_compatible(meta: Dict[str, Any], class_names: Sequence[str], generator_name: str,
                     generator_config: Dict[str, Any], per_class: int, seed: int,
                     where: PathLike) -> bool:
    """Whether a run may continue the anchor set described by ``meta``.

    Returns True when ``per_class`` grows (only the new ``k`` are then generated), False when it
    is the same; raises InputError naming the first difference otherwise.
    """
    old_names = list(meta["class_names"])
    if old_names != list(class_names):
        missing = [n for n in old_names if n not in class_names]
        extra = [n for n in class_names if n not in old_names]
        if missing or extra:
            detail = "; ".join(p for p in (
                f"not requested now: {_short_list(missing)}" if missing else "",
                f"new: {_short_list(extra)}" if extra else "") if p)
        else:
            detail = "same names in another order"
        raise InputError(f"{where} already holds an anchor set for other classes ({detail}); "
                         f"use the same class list or a new output folder")
    old_gen = meta["generator"]
    if old_gen.get("name") != generator_name:
        raise InputError(f"{where} was made by generator {old_gen.get('name')!r}, not "
                         f"{generator_name!r}; use a new output folder")
    old_cfg = _comparable_config(old_gen.get("config") or {})
    new_cfg = _comparable_config(generator_config)
    if old_cfg != new_cfg:
        for key in sorted(set(old_cfg) | set(new_cfg)):
            if old_cfg.get(key, "<unset>") != new_cfg.get(key, "<unset>"):
                raise InputError(
                    f"{where} was made with generator option {key}={old_cfg.get(key, '<unset>')!r}, "
                    f"now {key}={new_cfg.get(key, '<unset>')!r}; use the same options or a new "
                    f"output folder")
    if int(meta.get("seed", -1)) != int(seed):
        raise InputError(f"{where} was made with seed {meta.get('seed')}, now {seed}; "
                         f"use the same seed or a new output folder")
    old_pc = int(meta["per_class"])
    if per_class < old_pc:
        raise InputError(f"{where} already holds {old_pc} images per class, now {per_class} "
                         f"requested; ask for {old_pc} or more (or use a new output folder)")
    return per_class > old_pc


def prepare_anchor_set(root: PathLike, class_names: Sequence[str], generator_name: str,
                       generator_config: Dict[str, Any], per_class: int, seed: int, *,
                       write: bool = True) -> Dict[str, Any]:
    """Check that ``root`` is new, empty or a compatible anchor set, and (``write``) create or
    update its ``anchorset.json``. Nothing is created when a check fails.

    Only one process (rank 0) should pass ``write=True``; the checks are read-only, so every
    process can run them and fails the same way.
    """
    root = Path(root)
    meta_path = root / ANCHORSET_FILE
    if root.exists() and not root.is_dir():
        raise InputError(f"output {root} exists and is not a folder")
    if meta_path.is_file():
        meta = read_meta(root)
        grow = check_compatible(meta, class_names, generator_name, generator_config, per_class,
                                seed, root)
        if grow:
            meta = dict(meta, per_class=int(per_class), updated=_now())
            if write:
                write_json(meta_path, meta)
        return meta
    if root.is_dir():
        foreign = [p.name for p in root.iterdir()
                   if not (p.name in (IMAGES_DIR, LOCK_FILE) or _MANIFEST_RE.match(p.name)
                           or p.name.startswith(f".{ANCHORSET_FILE}."))]
        if foreign:
            raise InputError(f"output folder {root} is not empty and holds no anchor set "
                             f"(found {_short_list(sorted(foreign), 3)}); choose a new or empty "
                             f"folder")
    meta = make_meta(class_names, generator_name, generator_config, per_class, seed)
    if write:
        root.mkdir(parents=True, exist_ok=True)
        write_json(meta_path, meta)
    return meta


# ---------------------------------------------------------------------------- manifest reading
def manifest_files(root: PathLike) -> List[Path]:
    """``manifest.jsonl`` then ``manifest.<rank>.jsonl`` by rank."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _MANIFEST_RE.match(p.name)
        if m and p.is_file():
            found.append((-1 if m.group(1) is None else int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def read_manifest_rows(path: PathLike) -> List[Dict[str, Any]]:
    """The rows of one manifest file; lines that do not parse (a line torn by a crash) are
    skipped."""
    rows = []
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                continue  # torn last line
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if isinstance(row, dict) and all(k in row for k in _ROW_KEYS):
                rows.append(row)
    return rows


class AnchorSet:
    """An anchor set folder: its description, its valid manifest rows, and what is missing.

    Opening scans the folder (reads manifests, lists image files) without changing anything.

    Attributes:
        root: the folder.
        meta: the content of ``anchorset.json``.
        rows: ``{(class_index, k): row}`` for every image whose file exists and whose row is
            valid (class-major order by :meth:`sorted_rows`).
        orphans: ``{(class_index, k): path}`` image files without a valid row.
        temp_files: ``{(class_index, k): [paths]}`` leftover temp files of killed writes.
    """

    def __init__(self, root: PathLike, meta: Dict[str, Any]) -> None:
        self.root = Path(root)
        self.meta = meta
        self.rows: Dict[Key, Dict[str, Any]] = {}
        self.orphans: Dict[Key, Path] = {}
        self.temp_files: Dict[Key, List[Path]] = {}
        self.scan()

    # ------------------------------------------------------------------ basic facts
    @classmethod
    def open(cls, root: PathLike) -> "AnchorSet":
        """Open an existing anchor set (InputError when ``root`` is not one)."""
        root = Path(os.path.expanduser(str(root)))
        if not root.is_dir():
            raise InputError(f"anchor set folder not found: {root}")
        return cls(root, read_meta(root))

    @property
    def class_names(self) -> List[str]:
        return list(self.meta["class_names"])

    @property
    def per_class(self) -> int:
        return int(self.meta["per_class"])

    @property
    def seed(self) -> int:
        return int(self.meta.get("seed", 0))

    @property
    def generator_name(self) -> str:
        return str(self.meta["generator"].get("name"))

    @property
    def generator_config(self) -> Dict[str, Any]:
        return dict(self.meta["generator"].get("config") or {})

    @property
    def total(self) -> int:
        return len(self.class_names) * self.per_class

    def items(self, per_class: Optional[int] = None) -> List[Item]:
        """All ``(class_index, class_name, k)`` work items, class-major."""
        n = self.per_class if per_class is None else per_class
        return [(c, name, k) for c, name in enumerate(self.class_names) for k in range(n)]

    def missing_items(self, per_class: Optional[int] = None) -> List[Item]:
        """The work items without a valid row and file (orphans count as missing)."""
        return [it for it in self.items(per_class) if (it[0], it[2]) not in self.rows]

    @property
    def complete(self) -> bool:
        return not self.missing_items()

    def path_of(self, class_index: int, k: int) -> Path:
        return self.root / image_relpath(class_index, self.class_names[class_index], k)

    def __repr__(self) -> str:
        return (f"AnchorSet({str(self.root)!r}, classes={len(self.class_names)}, "
                f"per_class={self.per_class}, present={len(self.present_keys())}/{self.total}, "
                f"generator={self.generator_name!r})")

    def present_keys(self) -> List[Key]:
        return sorted(k for k in self.rows if k[1] < self.per_class)

    def sorted_rows(self) -> List[Dict[str, Any]]:
        """Valid rows of the images within ``per_class``, class-major."""
        return [self.rows[key] for key in self.present_keys()]

    # ------------------------------------------------------------------ scanning
    def scan(self) -> None:
        """(Re)read manifests and image folders; see the module docstring for the rules."""
        names = self.class_names
        candidates: Dict[Key, List[Dict[str, Any]]] = {}
        for path in manifest_files(self.root):
            for row in read_manifest_rows(path):
                try:
                    c, k = int(row["class_index"]), int(row["k"])
                except (TypeError, ValueError):
                    continue
                if not (0 <= c < len(names)) or k < 0:
                    continue
                if row["file"] != image_relpath(c, names[c], k) or row["class_name"] != names[c]:
                    continue  # a row that does not describe this set's file: ignore it
                candidates.setdefault((c, k), []).append(row)
        rows: Dict[Key, Dict[str, Any]] = {}
        orphans: Dict[Key, Path] = {}
        temps: Dict[Key, List[Path]] = {}
        on_disk: Dict[Key, Path] = {}
        images = self.root / IMAGES_DIR
        for c, name in enumerate(names):
            folder = images / class_dir_name(c, name)
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                m = _IMAGE_RE.match(entry.name)
                if m and entry.is_file():
                    on_disk[(c, int(m.group(1)))] = Path(entry.path)
                    continue
                t = _TEMP_RE.match(entry.name)
                if t:
                    temps.setdefault((c, int(t.group(1))), []).append(Path(entry.path))
        for key, path in on_disk.items():
            cands = candidates.get(key)
            if not cands:
                orphans[key] = path
                continue
            shas = {r["sha256"] for r in cands}
            if len(shas) == 1:
                rows[key] = cands[-1]
                continue
            actual = sha256_file(path)
            match = [r for r in cands if r["sha256"] == actual]
            if match:
                rows[key] = match[-1]
            else:
                orphans[key] = path
        self.rows, self.orphans, self.temp_files = rows, orphans, temps

    # ------------------------------------------------------------------ checking and loading
    def verify(self, keys: Optional[Iterable[Key]] = None) -> None:
        """Check each file against its manifest row: its size (``bytes``, when the row has it; a stat) and
        its sha256 (computed once per file version and process); InputError naming the first
        file that differs (replaced, edited or corrupt after generation)."""
        for key in (self.present_keys() if keys is None else keys):
            row = self.rows[key]
            path = self.root / row["file"]
            try:
                size = os.stat(path).st_size
                same = (row.get("bytes") is None or int(row["bytes"]) == size) and hash_file(path) == row["sha256"]
            except FileNotFoundError:
                raise InputError(f"anchor set {self.root}: {row['file']} is missing") from None
            if not same:
                raise InputError(f"anchor set {self.root}: {path} does not match its manifest (size and sha256): it was "
                                 f"replaced, edited or corrupted after generation; restore it, or delete it and "
                                 f"re-run synref generate to make it again")

    def load(self, *, verify: bool = False, decode: bool = True,
             allow_incomplete: bool = False) -> LabeledImages:
        """The anchors as LabeledImages, class-major (label = class index).

        Args:
            verify: recompute every sha256 (InputError naming a file that differs).
            decode: uint8 images ``(N, H, W, C)``; False gives a path-backed set.
            allow_incomplete: load what is there instead of raising when images are missing.

        Ids are ``"<generator>-<class name>-<k>"``; paths are the PNG files.
        """
        missing = self.missing_items()
        if missing and not allow_incomplete:
            c, name, k = missing[0]
            raise InputError(f"anchor set {self.root} is incomplete: {len(missing)} of "
                             f"{self.total} images missing (first: class {name!r} k={k}); "
                             f"re-run the same synref generate command to finish it")
        keys = self.present_keys()
        if not keys:
            raise InputError(f"anchor set {self.root} holds no images yet")
        if verify:
            self.verify(keys)
        paths = [str(self.root / self.rows[key]["file"]) for key in keys]
        labels = np.asarray([c for c, _ in keys], dtype=np.int64)
        names = self.class_names
        ids = [f"{self.generator_name}-{names[c]}-{k}" for c, k in keys]
        images = None
        if decode:
            first = decode_png(paths[0])
            images = np.empty((len(paths),) + first.shape, dtype=np.uint8)
            images[0] = first
            for i in range(1, len(paths)):
                img = decode_png(paths[i])
                if img.shape != first.shape:
                    raise InputError(f"anchor set {self.root}: {self.rows[keys[i]]['file']} is "
                                     f"{img.shape}, unlike {first.shape} of the first image")
                images[i] = img
        return LabeledImages(images=images, labels=labels, class_names=names, paths=paths, ids=ids)


def load_anchor_set(root: PathLike, *, verify: bool = False, decode: bool = True,
                    allow_incomplete: bool = False, with_manifest: bool = False):
    """Load the anchor set in ``root`` (see :meth:`AnchorSet.load`).

    Returns LabeledImages, or ``(LabeledImages, rows)`` with ``with_manifest=True`` where
    ``rows[i]`` is the manifest row (dict) of image ``i``.
    """
    store = AnchorSet.open(root)
    ds = store.load(verify=verify, decode=decode, allow_incomplete=allow_incomplete)
    if with_manifest:
        return ds, store.sorted_rows()
    return ds


# ---------------------------------------------------------------------------- writing
class ManifestWriter:
    """Writes images and appends rows to one process's manifest file (see module docstring)."""

    def __init__(self, store: AnchorSet, process_index: int = 0, num_processes: int = 1) -> None:
        self.store = store
        self.path = store.root / manifest_name(process_index, num_processes)
        store.root.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")
        # a line torn by a crash: start a new one after it
        if self._fh.tell() > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._append(b"\n")

    def _append(self, data: bytes) -> None:
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _row(self, c: int, name: str, k: int, sha: str, provenance: Dict[str, Any], size: int) -> Dict[str, Any]:
        row: Dict[str, Any] = {"class_index": c, "class_name": name, "k": k,
                               "file": image_relpath(c, name, k), "sha256": sha, "bytes": int(size),
                               "seed": self.store.seed}
        for key, value in (provenance or {}).items():
            row.setdefault(key, value)
        return row

    def _add_row(self, row: Dict[str, Any]) -> Dict[str, Any]:
        line = json.dumps(row, default=json_default, ensure_ascii=False) + "\n"
        self._append(line.encode("utf-8"))
        self.store.rows[(row["class_index"], row["k"])] = row
        return row

    def write(self, c: int, name: str, k: int, image: np.ndarray,
              provenance: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Put image ``k`` of class ``c`` in place (temp + fsync + rename), then its row."""
        data = encode_png(image)
        final = self.store.root / image_relpath(c, name, k)
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(final, "wb", fsync_dir=True) as handle:
            handle.write(data)
        self.store.orphans.pop((c, k), None)
        return self._add_row(self._row(c, name, k, sha256_bytes(data), provenance or {}, len(data)))

    def adopt(self, c: int, name: str, k: int,
              provenance: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
        """Give the orphan file of ``(c, k)`` its row if it decodes; else delete it, return None."""
        path = self.store.orphans.pop((c, k), None) or self.store.path_of(c, k)
        try:
            decode_png(path)
        except InputError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        return self._add_row(self._row(c, name, k, sha256_file(path), provenance or {}, os.path.getsize(path)))

    def remove_temp_files(self, c: int, k: int) -> int:
        paths = self.store.temp_files.pop((c, k), [])
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        return len(paths)

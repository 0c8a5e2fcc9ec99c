"""Hugging Face ``datasets`` as ``--data``: a folder written by ``save_to_disk`` (a ``Dataset`` or a
``DatasetDict``: ``split`` picks the split) or parquet file(s) with an image column.

:func:`load_hf_dataset` returns a path-backed :class:`LabeledImages` whose "paths" are **row
references** ``hf:<source>::<column>[<row>]`` (:func:`row_ref`): ``source`` is the absolute path of
the saved split folder or of one parquet file, ``row`` the row inside it. Nothing is decoded when
loading: only the label column is read. :func:`synref.data.decode.open_image` opens a reference
from the row's bytes (:func:`ref_image_bytes`), so a dataset streams batch by batch into the
encoder exactly like image files (:class:`synref.data.stream.PathStream`), and the report and the
review page open the rows they show the same way. An arrow folder is memory-mapped; a parquet file
is read one row group at a time (the last few kept, shared by the decoding threads).

Class names come from the label column's ``ClassLabel`` feature (the dataset's features, or the
``huggingface`` metadata of a parquet schema); otherwise integer labels are named "0".."max" and
string labels are the sorted unique strings, as in a CSV manifest. Columns: ``image_column`` (default:
the first ``Image`` feature, else a column named ``image`` / ``img``) and ``label_column`` (default:
the first ``ClassLabel`` feature, else ``label`` / ``labels``).

:func:`write_with_labels` writes a copy of such a dataset with one more column (``synref apply --to
datasets``). Needs the ``datasets`` extra (``pip install 'synref[datasets]'``).
"""
from __future__ import annotations

import io
import json
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, one_line
from ..optional import require
from .container import LabeledImages

__all__ = ["REF_PREFIX", "is_hf_dataset", "load_hf_dataset", "row_ref", "parse_ref", "ref_image_bytes",
           "hf_sources", "hf_num_rows", "write_with_labels"]

#: Row references start with this; the rest is ``<source>::<column>[<row>]``.
REF_PREFIX = "hf:"
_REF = re.compile(r"^hf:(?P<source>.+)::(?P<column>[^\n]*)\[(?P<row>\d+)\]$", re.S)
_FEATURE = "Hugging Face datasets as --data"
#: parquet row groups kept decoded per file (the decoding threads read rows in order).
_ROW_GROUPS_KEPT = 3


def row_ref(source: str, column: str, row: int) -> str:
    """``hf:<source>::<column>[<row>]``: one row's image of a saved split folder / parquet file."""
    return f"{REF_PREFIX}{source}::{column}[{int(row)}]"


def parse_ref(path: str) -> Optional[Tuple[str, str, int]]:
    """``(source, column, row)`` of a row reference; None for anything else (a file path)."""
    if not str(path).startswith(REF_PREFIX):
        return None
    m = _REF.match(str(path))
    if m is None:
        return None
    return m.group("source"), m.group("column"), int(m.group("row"))


# ------------------------------------------------------------------------------ detection
def _is_saved_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file()
                              or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()))


def _parquet_files(path: Path) -> List[Path]:
    if path.is_file():
        return [path] if path.suffix.lower() == ".parquet" else []
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".parquet"
                      and not p.name.startswith("."))
    return []


def is_hf_dataset(spec: str) -> bool:
    """A ``save_to_disk`` folder, a ``.parquet`` file or a folder of ``.parquet`` files."""
    path = Path(os.path.expanduser(str(spec)))
    return _is_saved_folder(path) or bool(_parquet_files(path))


# ------------------------------------------------------------------------------ readers
class _ArrowRows:
    """Random access to one column of a saved (memory-mapped) split."""

    def __init__(self, folder: str, column: str) -> None:
        datasets = require("datasets", _FEATURE)
        try:
            ds = datasets.load_from_disk(folder)
        except Exception as exc:
            raise InputError(f"cannot read the saved dataset {folder}: {one_line(exc)}") from None
        table = ds.data
        if column not in table.column_names:
            raise InputError(f"the dataset {folder} has no column {column!r}")
        self.chunks = table.column(column).chunks
        self.starts = np.cumsum([0] + [len(c) for c in self.chunks])

    def value(self, row: int) -> Any:
        k = int(np.searchsorted(self.starts, row, side="right")) - 1
        if not 0 <= k < len(self.chunks):
            raise IndexError(row)
        return self.chunks[k][row - int(self.starts[k])].as_py()


class _ParquetRows:
    """Rows of one column of a parquet file, one row group decoded at a time (a few kept)."""

    def __init__(self, file: str, column: str) -> None:
        pq = require("pyarrow.parquet", _FEATURE)
        try:
            self.file = pq.ParquetFile(file)
        except Exception as exc:
            raise InputError(f"cannot read parquet file {file}: {one_line(exc)}") from None
        if column not in self.file.schema_arrow.names:
            raise InputError(f"parquet file {file} has no column {column!r}")
        self.column = column
        meta = self.file.metadata
        self.starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        self.kept: "OrderedDict[int, Any]" = OrderedDict()
        self.lock = threading.Lock()

    def value(self, row: int) -> Any:
        k = int(np.searchsorted(self.starts, row, side="right")) - 1
        if not 0 <= k < len(self.starts) - 1:
            raise IndexError(row)
        with self.lock:
            group = self.kept.get(k)
            if group is None:
                group = self.file.read_row_group(k, columns=[self.column]).column(0)
                self.kept[k] = group
                while len(self.kept) > _ROW_GROUPS_KEPT:
                    self.kept.popitem(last=False)
            else:
                self.kept.move_to_end(k)
        return group[row - int(self.starts[k])].as_py()


_READERS: Dict[Tuple[str, str], Any] = {}
_READERS_LOCK = threading.Lock()


def _reader(source: str, column: str) -> Any:
    """The open reader of a source's column (re-opened when the source was written again)."""
    try:
        st = os.stat(os.path.join(source, "state.json") if os.path.isdir(source) else source)
    except OSError:
        raise InputError(f"dataset not found: {source}") from None
    key = (source, column)
    with _READERS_LOCK:
        version, reader = _READERS.get(key, (None, None))
        if reader is None or version != (st.st_size, st.st_mtime_ns):
            reader = _ArrowRows(source, column) if os.path.isdir(source) else _ParquetRows(source, column)
            _READERS[key] = ((st.st_size, st.st_mtime_ns), reader)
        return reader


def ref_image_bytes(path: str) -> Tuple[bytes, str]:
    """``(encoded image bytes, a name for them)`` of a row reference: the row's ``{bytes, path}``
    (an ``Image`` feature), raw bytes, or a file path. InputError naming the reference when the row
    or its image is missing."""
    parsed = parse_ref(path)
    if parsed is None:
        raise InputError(f"not a dataset row reference: {path}")
    source, column, row = parsed
    try:
        value = _reader(source, column).value(row)
    except IndexError:
        raise InputError(f"{path}: row {row} is outside the dataset {source}") from None
    name = f"{row}"
    if isinstance(value, dict):
        data, inner = value.get("bytes"), value.get("path")
        if inner:
            name = os.path.basename(str(inner))
        if data is None and inner:
            file = str(inner) if os.path.isabs(str(inner)) else os.path.join(
                source if os.path.isdir(source) else os.path.dirname(source), str(inner))
            try:
                with open(file, "rb") as handle:
                    data = handle.read()
            except OSError as exc:
                raise InputError(f"{path}: cannot read its image file {file}: {one_line(exc)}") from None
        value = data
    elif isinstance(value, str):
        try:
            with open(value, "rb") as handle:
                return handle.read(), os.path.basename(value)
        except OSError as exc:
            raise InputError(f"{path}: cannot read its image file {value}: {one_line(exc)}") from None
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise InputError(f"{path}: the row has no image")
    return bytes(value), name


def open_ref_image(path: str):
    """A PIL image of a row reference (what :func:`synref.data.decode.open_image` returns)."""
    from PIL import Image

    data, _ = ref_image_bytes(path)
    try:
        return Image.open(io.BytesIO(data))
    except Exception as exc:
        raise InputError(f"cannot open image {path}: {one_line(exc)}") from None


# ------------------------------------------------------------------------------ loading
def _features_of(path: Path, schema: Any) -> Dict[str, Any]:
    """The dataset's features (``datasets.Features``) of a saved folder or a parquet schema."""
    datasets = require("datasets", _FEATURE)
    if schema is not None:
        try:
            return dict(datasets.Features.from_arrow_schema(schema))
        except Exception:  # no huggingface metadata: plain arrow types
            return {}
    try:
        info = json.loads((path / "dataset_info.json").read_text(encoding="utf-8"))
        return dict(datasets.Features.from_dict(info.get("features") or {}))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"cannot read {path / 'dataset_info.json'}: {one_line(exc)}") from None


def _pick_column(columns: Sequence[str], features: Dict[str, Any], given: Optional[str], kind: str,
                 fallbacks: Sequence[str], option: str, where: str) -> str:
    if given is not None:
        if given not in columns:
            raise InputError(f"{option} {given!r}: {where} has no such column (columns: {', '.join(columns)})")
        return given
    typed = [c for c in columns if type(features.get(c)).__name__ == kind]
    if typed:
        return typed[0]
    for name in fallbacks:
        if name in columns:
            return name
    raise InputError(f"{where} has no {kind} column and none named {' or '.join(fallbacks)}; "
                     f"name one with {option} (columns: {', '.join(columns)})")


def _split_folder(path: Path, split: str) -> Path:
    if not (path / "dataset_dict.json").is_file():
        if split != "train":
            raise InputError(f"{path} is a single saved dataset with no {split!r} split (give the DatasetDict "
                             f"folder, or leave --split at train)")
        return path
    try:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits") or []
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"cannot read {path / 'dataset_dict.json'}: {one_line(exc)}") from None
    if split not in splits:
        raise InputError(f"{path} has no {split!r} split (it has: {', '.join(map(str, splits)) or 'none'})")
    return path / split


def _parquet_split(files: List[Path], split: str, root: Path) -> List[Path]:
    """The files of ``split`` when their names start with split names (``train-00000-of-00002``)."""
    if len(files) == 1 and root.is_file():
        return files
    named = {f: re.split(r"[-_.]", f.name, maxsplit=1)[0].lower() for f in files}
    from .loaders import SPLIT_FOLDER_NAMES

    if all(n in SPLIT_FOLDER_NAMES for n in named.values()):
        chosen = [f for f in files if named[f] == split.lower()]
        if not chosen:
            raise InputError(f"{root} has no parquet files of the {split!r} split "
                             f"(it has: {', '.join(sorted(set(named.values())))})")
        return chosen
    if split != "train":
        raise InputError(f"the parquet files in {root} are not named by split, so there is no {split!r} split")
    return files


def _labels_to_ints(values: List[Any], names: Optional[List[str]], where: str) -> Tuple[np.ndarray, List[str]]:
    if any(v is None for v in values):
        raise InputError(f"{where}: row {[v is None for v in values].index(True)} has no label")
    if names is not None:
        labels = np.asarray(values, dtype=np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
        if bad.size:
            raise InputError(f"{where}: row {bad[0]} has label {labels[bad[0]]}, outside the {len(names)} "
                             f"classes (-1 marks an unlabelled row)")
        return labels, names
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        labels = np.asarray(values, dtype=np.int64)
        if labels.size and labels.min() < 0:
            raise InputError(f"{where}: row {int(np.argmin(labels))} has negative label {labels.min()}")
        return labels, [str(i) for i in range(int(labels.max(initial=-1)) + 1)]
    text = [str(v) for v in values]
    names = sorted(set(text))
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[t] for t in text], dtype=np.int64), names


def hf_sources(spec: str, split: str = "train") -> List[str]:
    """The absolute sources (saved split folder, or parquet files in order) of ``spec``'s split."""
    path = Path(os.path.abspath(os.path.expanduser(str(spec))))
    if _is_saved_folder(path):
        return [str(_split_folder(path, split))]
    files = _parquet_files(path)
    if not files:
        raise InputError(f"{spec} is not a saved Hugging Face dataset or parquet file(s)")
    return [str(f) for f in _parquet_split(files, split, path)]


def load_hf_dataset(spec: str, *, split: str = "train", image_column: Optional[str] = None,
                    label_column: Optional[str] = None) -> LabeledImages:
    """A saved dataset folder or parquet file(s) as a path-backed :class:`LabeledImages` of row
    references (see the module docstring); only the label column is read. Ids are the row numbers
    ("0".."N-1", over the parquet files in name order)."""
    sources = hf_sources(spec, split)
    refs: List[str] = []
    labels: List[Any] = []
    names: Optional[List[str]] = None
    image = label = None
    for source in sources:
        where = f"dataset {source}"
        if os.path.isdir(source):
            datasets = require("datasets", _FEATURE)
            try:
                table = datasets.load_from_disk(source).data
            except Exception as exc:
                raise InputError(f"cannot read the saved dataset {source}: {one_line(exc)}") from None
            columns, features = list(table.column_names), _features_of(Path(source), None)
            read = lambda col: table.column(col).to_pylist()  # noqa: E731
            n = table.num_rows
        else:
            pq = require("pyarrow.parquet", _FEATURE)
            try:
                file = pq.ParquetFile(source)
            except Exception as exc:
                raise InputError(f"cannot read parquet file {source}: {one_line(exc)}") from None
            columns, features = list(file.schema_arrow.names), _features_of(Path(source), file.schema_arrow)
            read = lambda col: file.read(columns=[col]).column(0).to_pylist()  # noqa: E731
            n = file.metadata.num_rows
        image = _pick_column(columns, features, image_column, "Image", ("image", "img"), "--image-column", where)
        label = _pick_column(columns, features, label_column, "ClassLabel", ("label", "labels"), "--label-column",
                             where)
        if "::" in image or "\n" in image:
            raise InputError(f"--image-column {image!r}: synref cannot use a column name with '::' or a newline")
        feature = features.get(label)
        own = [str(x) for x in feature.names] if type(feature).__name__ == "ClassLabel" else None
        if names is not None and own is not None and own != names:
            raise InputError(f"{where}: its class names differ from those of {sources[0]}")
        names = own if own is not None else names
        labels.extend(read(label))
        refs.extend(row_ref(source, image, i) for i in range(n))
    if not refs:
        raise InputError(f"dataset {spec} is empty")
    ints, class_names = _labels_to_ints(labels, names, f"dataset {spec} column {label!r}")
    return LabeledImages(images=None, labels=ints, class_names=class_names, paths=refs,
                         ids=[str(i) for i in range(len(refs))])


def hf_num_rows(spec: str, split: str = "train") -> int:
    """The rows of ``spec``'s split (the saved folder's table, or the parquet footers)."""
    total = 0
    for source in hf_sources(spec, split):
        if os.path.isdir(source):
            total += len(require("datasets", _FEATURE).load_from_disk(source))
        else:
            total += int(require("pyarrow.parquet", _FEATURE).ParquetFile(source).metadata.num_rows)
    return total


# ------------------------------------------------------------------------------ writing
def write_with_labels(spec: str, split: str, labels: np.ndarray, class_names: Sequence[str], dest: Path,
                      column: str = "synref_label") -> List[Path]:
    """A copy of ``spec``'s ``split`` with one more ``ClassLabel`` column ``column`` = ``labels``
    (N,) int, one per row of the split (-1: no label), into the new folder ``dest``: a saved folder is written with
    ``save_to_disk``; parquet files are copied row group by row group with the column added (same
    file names). Returns the written paths."""
    datasets = require("datasets", _FEATURE)
    sources = hf_sources(spec, split)
    labels = np.asarray(labels, dtype=np.int64)
    feature = datasets.ClassLabel(names=[str(c) for c in class_names])
    written: List[Path] = []
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        offset = _write_sources(sources, labels, feature, column, dest, written)
    finally:
        if bars:
            datasets.enable_progress_bars()
    if offset != len(labels):
        raise InputError(f"dataset {spec} has {offset} rows but the results have {len(labels)}")
    return written


def _write_sources(sources: Sequence[str], labels: np.ndarray, feature: Any, column: str, dest: Path,
                   written: List[Path]) -> int:
    datasets = require("datasets", _FEATURE)
    pa = require("pyarrow", _FEATURE)
    pq = require("pyarrow.parquet", _FEATURE)
    offset = 0
    dest.mkdir(parents=True, exist_ok=True)
    for source in sources:
        if os.path.isdir(source):
            ds = datasets.load_from_disk(source)
            if column in ds.column_names:
                ds = ds.remove_columns(column)
            part = labels[offset:offset + len(ds)]
            ds = ds.add_column(column, part.tolist(), feature=feature)
            target = dest
            ds.save_to_disk(str(target))
            offset += len(ds)
            written.append(target)
            continue
        file = pq.ParquetFile(source)
        schema = file.schema_arrow
        if column in schema.names:
            schema = schema.remove(schema.get_field_index(column))
        features = datasets.Features.from_arrow_schema(file.schema_arrow)
        if column in features:
            del features[column]
        features[column] = feature
        schema = schema.append(pa.field(column, pa.int64()))
        schema = schema.with_metadata({**(schema.metadata or {}),
                                       b"huggingface": json.dumps({"info": {"features": features.to_dict()}})})
        target = dest / Path(source).name
        with pq.ParquetWriter(str(target), schema) as writer:
            for k in range(file.metadata.num_row_groups):
                table = file.read_row_group(k)
                if column in table.column_names:
                    table = table.drop_columns([column])
                part = labels[offset:offset + table.num_rows]
                offset += table.num_rows
                table = table.append_column(pa.field(column, pa.int64()), pa.array(part, pa.int64()))
                writer.write_table(table.replace_schema_metadata(schema.metadata))
        written.append(target)
    return offset

"""Label files: ``.npy`` (integers, no pickles) or ``.txt`` / ``.csv`` (one label per line)."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError, one_line
from ..io import check_input_file, npy_problem
from ..validation import check_labels
from .loaders import parse_int, read_csv_rows

__all__ = ["load_labels_file"]

PathLike = Union[str, "os.PathLike[str]"]


def load_labels_file(path: PathLike, *, num_samples: Optional[int], num_classes: Optional[int],
                     paths: Optional[Sequence[str]] = None, ids: Optional[Sequence[str]] = None,
                     class_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Labels from ``.npy`` (integer ``(N,)``, no pickles) or ``.txt``/``.csv`` (one integer per
    line, in the dataset's order; a ``.csv`` may have a header, and then its ``label`` column is
    used).

    A ``.csv`` whose header has a ``path`` column is matched to the dataset's samples by path, not
    by row order: each row's path is a sample's id or its file (relative paths resolve against the
    CSV's folder), and its label a class name of ``class_names`` or a class index; ``paths`` /
    ``ids`` (N,) are the dataset's. Every sample needs exactly one row; a dataset without files
    (``paths`` None) refuses such a file.

    Returns int64 ``(N,)``. ``num_samples`` / ``num_classes`` = None skip that check. A length
    mismatch or a label outside ``[0, num_classes)`` raises InputError naming the file.
    """
    path = check_input_file(Path(os.path.expanduser(str(path))), "labels file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"cannot read labels file {path}: {npy_problem(exc)}") from None
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
        labels = _read_text_labels(path, csv_mode=suffix == ".csv", paths=paths, ids=ids, class_names=class_names)
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


def _read_text_labels(path: Path, *, csv_mode: bool, paths: Optional[Sequence[str]] = None,
                      ids: Optional[Sequence[str]] = None,
                      class_names: Optional[Sequence[str]] = None) -> np.ndarray:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            if csv_mode:
                rows = [(line, [f.strip() for f in row]) for line, row in read_csv_rows(handle)]
            else:
                rows = [(i, [s.strip()]) for i, s in enumerate(handle.read().splitlines(), start=1)
                        if s.strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read labels file {path}: {one_line(exc)}") from None
    column, width = 0, 1
    if csv_mode and rows and any(parse_int(f) is None for f in rows[0][1]):
        header = [f.lower() for f in rows[0][1]]
        if len(header) > 1 and "label" not in header:
            raise InputError(f"{path}: header has no 'label' column (its columns: "
                             f"{', '.join(rows[0][1])})")
        if "path" in header:
            return _labels_by_path(path, rows[1:], header, paths, ids, class_names)
        column, width = (header.index("label") if len(header) > 1 else 0), len(header)
        rows = rows[1:]
    labels = np.empty(len(rows), dtype=np.int64)
    for k, (line, fields) in enumerate(rows):
        if len(fields) != width:
            raise InputError(f"{path}: line {line}: {len(fields)} fields, expected {width} "
                             "(one label per line, or a header with a 'label' column)")
        value = parse_int(fields[column])
        if value is None:
            raise InputError(f"{path}: line {line}: {fields[column]!r} is not an integer label")
        labels[k] = value
    return labels


def _labels_by_path(path: Path, rows: List[Tuple[int, List[str]]], header: List[str],
                    paths: Optional[Sequence[str]], ids: Optional[Sequence[str]],
                    class_names: Optional[Sequence[str]]) -> np.ndarray:
    """(N,) labels of a ``path,label`` CSV matched to the dataset's samples by path (see
    :func:`load_labels_file`)."""
    if paths is None or ids is None:
        raise InputError(f"{path} has a 'path' column, but this dataset has no image files to match it to; give "
                         "one label per sample in the dataset's order (no 'path' column)")
    by_id = {str(ident): i for i, ident in enumerate(ids)}
    by_file = {os.path.normpath(os.path.abspath(p)): i for i, p in enumerate(paths)}
    names = {str(n): i for i, n in enumerate(class_names or [])}
    where, col = path.parent, header.index("label")
    labels = np.zeros(len(paths), dtype=np.int64)
    given_at: Dict[int, int] = {}
    for line, fields in rows:
        if len(fields) != len(header):
            raise InputError(f"{path}: line {line}: {len(fields)} fields, the header has {len(header)}")
        rel, text = fields[header.index("path")], fields[col]
        sample = by_id.get(rel)
        if sample is None:
            full = Path(os.path.expanduser(rel))
            sample = by_file.get(os.path.normpath(full if full.is_absolute() else where / full))
        if sample is None:
            raise InputError(f"{path}: line {line}: {rel!r} is not an image of the dataset (matched by its id or "
                             f"file path)")
        if sample in given_at:
            raise InputError(f"{path}: line {line}: {rel!r} was already given a label on line {given_at[sample]}")
        value = names.get(text, parse_int(text))
        if value is None:
            raise InputError(f"{path}: line {line}: {text!r} is neither a class name nor an integer label")
        labels[sample], given_at[sample] = value, line
    if len(given_at) < len(paths):
        missing = [i for i in range(len(paths)) if i not in given_at]
        raise InputError(f"{path}: no label for {len(missing)} of the {len(paths)} images (first: {ids[missing[0]]})")
    return labels

"""Reading the results folder of ``synref refine --out OUT`` in a streaming way, for the review
page (:mod:`synref.apps.review`) and ``synref apply`` (:mod:`synref.apps.apply`).

``refined_labels.csv`` is read row by row into a few numeric ``(N,)`` arrays (no per-row dicts, no
strings kept: :func:`iter_rows` streams the strings again when a writer needs them) and
``scores.npy`` is memory-mapped and read in row blocks. Nothing here assumes the images exist.

The **review items** are the rows a person should look at: every changed row (the suggestion is
its ``suggested_label``) and every *flagged* one: unchanged, but its best-scoring class is not the
given one (``best_score > given_score``; the suggestion is that class, read from ``scores.npy``,
so there are no flagged items without it). Their probability ``p`` is the suggested class's score.
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..errors import InputError, one_line
from ..io import npy_problem, read_json_object
from .report import iter_csv_rows

__all__ = ["Results", "read_results", "iter_rows", "row_strings", "CHANGED", "FLAGGED"]

PathLike = Union[str, Path]
#: ``Results.kind`` of a review item.
CHANGED, FLAGGED = 0, 1
#: rows of scores.npy read at once.
_BLOCK = 4096
_YES = {"yes", "true", "1", "y"}
_NO = {"no", "false", "0", "n", ""}


@dataclass
class Results:
    """A results folder, its per-row numbers and its review items.

    Attributes:
        out: the folder.
        summary: ``summary.json``.
        class_names: the C class names.
        given, suggested: (N,) int64 labels by row index (the CSV's ``index``).
        best_score, given_score: (N,) float64 (NaN when empty).
        changed: (N,) bool.
        items: (K,) int64 row indices of the review items (changed first, then flagged, each in
            index order).
        proposal: (K,) int64 the suggested class of each item.
        p: (K,) float64 the score of ``proposal`` (the estimated probability of the posterior
            refiner).
        kind: (K,) int8 :data:`CHANGED` or :data:`FLAGGED`.
        has_scores: whether ``scores.npy`` was there (else no flagged items).
    """

    out: Path
    summary: Dict[str, Any]
    class_names: List[str]
    given: np.ndarray
    suggested: np.ndarray
    best_score: np.ndarray
    given_score: np.ndarray
    changed: np.ndarray
    items: np.ndarray
    proposal: np.ndarray
    p: np.ndarray
    kind: np.ndarray
    has_scores: bool

    @property
    def num_samples(self) -> int:
        return len(self.given)

    @property
    def csv_path(self) -> Path:
        return self.out / "refined_labels.csv"


def _results_dir(out_dir: PathLike) -> Path:
    out = Path(out_dir)
    if not out.exists():
        raise InputError(f"results folder not found: {out}")
    if not out.is_dir():
        raise InputError(f"not a results folder (not a directory): {out}")
    if not (out / "summary.json").is_file():
        raise InputError(f"{out} has no summary.json: run synref refine first")
    if not (out / "refined_labels.csv").is_file():
        raise InputError(f"{out} has no refined_labels.csv: run synref refine first")
    return out


def _float(text: str) -> float:
    text = text.strip()
    return float(text) if text else math.nan


def iter_rows(out_dir: PathLike) -> Iterator[Dict[str, Any]]:
    """The rows of ``OUT/refined_labels.csv``, one at a time: ``{index, id, path, given_label,
    suggested_label, best_score, given_score, changed}`` typed; InputError naming the row on a bad
    value or a missing column."""
    path = Path(out_dir) / "refined_labels.csv"
    for number, row in enumerate(iter_csv_rows(path), 1):
        try:
            changed = str(row["changed"]).strip().lower()
            if changed not in _YES and changed not in _NO:
                raise ValueError(f"changed must be yes or no, got {row['changed']!r}")
            index = int(str(row["index"]).strip())
            yield {"index": index, "id": str(row.get("id") or index), "path": str(row.get("path") or ""),
                   "given_label": int(str(row["given_label"]).strip()),
                   "suggested_label": int(str(row["suggested_label"]).strip()),
                   "best_score": _float(str(row["best_score"] or "")),
                   "given_score": _float(str(row["given_score"] or "")), "changed": changed in _YES}
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path} row {number}: bad value ({one_line(exc)})") from None


_COLUMN_TYPES = {"index": np.int64, "given_label": np.int64, "suggested_label": np.int64, "best_score": np.float64,
                 "given_score": np.float64, "changed": str}


def _parsed_columns(path: Path) -> Optional[Dict[str, np.ndarray]]:
    """The typed columns of ``refined_labels.csv`` read by pandas' C parser (10^6 rows in about a
    second, the row iterator takes 10 s); None when a column is missing or a value does not parse
    exactly as :func:`iter_rows` reads it (then the caller iterates the rows, which names the row)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, usecols=list(_COLUMN_TYPES), dtype=_COLUMN_TYPES, keep_default_na=False,
                            na_values={"best_score": [""], "given_score": [""]}, engine="c")
    except (ValueError, TypeError, OverflowError, pd.errors.ParserError):
        return None
    changed = frame["changed"].str.strip().str.lower()
    if not changed.isin(_YES | _NO).all():
        return None
    cols = {key: frame[key].to_numpy() for key in ("index", "given_label", "suggested_label", "best_score",
                                                   "given_score")}
    cols["changed"] = changed.isin(_YES).to_numpy()
    return cols


def row_strings(out_dir: PathLike, rows: np.ndarray) -> Tuple[List[str], List[str]]:
    """(ids, paths) of the rows with CSV ``index`` ``rows`` (K,) (in that order), read from
    ``OUT/refined_labels.csv`` in chunks of 200,000 rows by pandas' parser (no Python object per
    row of the file; the row iterator when pandas refuses the file, which names a bad row)."""
    import pandas as pd

    path = Path(out_dir) / "refined_labels.csv"
    where = {int(r): k for k, r in enumerate(rows)}
    ids, paths = [""] * len(rows), [""] * len(rows)
    try:
        header = pd.read_csv(path, nrows=0).columns
        usecols = ["index"] + [name for name in ("id", "path") if name in header]
        for chunk in pd.read_csv(path, usecols=usecols, dtype=str, keep_default_na=False, chunksize=200_000):
            index = chunk["index"].str.strip().astype(np.int64).to_numpy()
            for at in np.flatnonzero(np.isin(index, rows)):
                k = where[int(index[at])]
                ids[k] = str(chunk["id"].iat[at]) if "id" in chunk and chunk["id"].iat[at] else str(index[at])
                paths[k] = str(chunk["path"].iat[at]) if "path" in chunk else ""
        return ids, paths
    except (ValueError, TypeError, OverflowError, KeyError, pd.errors.ParserError):
        pass
    for row in iter_rows(path.parent):
        k = where.get(row["index"])
        if k is not None:
            ids[k], paths[k] = row["id"], row["path"]
    return ids, paths


def _class_names(summary: Dict[str, Any], out: Path) -> List[str]:
    names = summary.get("class_names")
    if not isinstance(names, list) or not names:
        raise InputError(f"{out / 'summary.json'} names no classes (class_names)")
    return [str(n) for n in names]


def _open_scores(out: Path, n: int, c: int) -> Optional[np.ndarray]:
    path = out / "scores.npy"
    if not path.is_file():
        return None
    try:
        scores = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a bad file
        raise InputError(f"cannot read {path}: {npy_problem(exc)}") from None
    if scores.ndim != 2 or scores.shape != (n, c):
        raise InputError(f"{path} has shape {scores.shape}, expected ({n}, {c}) (refined_labels.csv rows, classes)")
    return scores


def read_results(out_dir: PathLike) -> Results:
    """Read ``OUT`` (summary.json, refined_labels.csv streamed, scores.npy memory-mapped) into a
    :class:`Results`. InputError naming the file / row when something is missing or inconsistent."""
    out = _results_dir(out_dir)
    summary = read_json_object(out / "summary.json", "summary")
    names = _class_names(summary, out)
    c = len(names)
    cols = _parsed_columns(out / "refined_labels.csv")
    if cols is None:  # a value pandas' parser does not take: the row iterator names it (or accepts it)
        # typed buffers (8 bytes a value, not a Python object): 10^6 rows take 48 MB
        buffers: Dict[str, array] = {"index": array("q"), "given_label": array("q"), "suggested_label": array("q"),
                                     "best_score": array("d"), "given_score": array("d"), "changed": array("b")}
        for row in iter_rows(out):
            for key, values in buffers.items():
                values.append(row[key])
        cols = {key: np.frombuffer(values, dtype=np.dtype(values.typecode)) for key, values in buffers.items()}
    index = np.asarray(cols["index"], dtype=np.int64)
    n = len(index)
    if n == 0:
        raise InputError(f"{out / 'refined_labels.csv'} has no rows")
    csv_path = out / "refined_labels.csv"
    if index.min() < 0 or index.max() >= n or np.unique(index).size != n:
        bad = int(index[(index < 0) | (index >= n)][0]) if (index.min() < 0 or index.max() >= n) else None
        raise InputError(f"{csv_path}: the index column must number the {n} rows 0..{n - 1} once each"
                         + (f" (has {bad})" if bad is not None else " (has duplicates)"))
    order = np.argsort(index, kind="stable")

    def column(key: str, dtype: Any) -> np.ndarray:
        return np.asarray(cols[key]).astype(dtype)[order]

    given, suggested = column("given_label", np.int64), column("suggested_label", np.int64)
    for what, labels in (("given_label", given), ("suggested_label", suggested)):
        bad = np.flatnonzero((labels < 0) | (labels >= c))
        if bad.size:
            raise InputError(f"{csv_path}: row with index {bad[0]} has {what} {labels[bad[0]]}, outside [0, {c})")
    best, given_score = column("best_score", np.float64), column("given_score", np.float64)
    changed = column("changed", bool) | (given != suggested)
    scores = _open_scores(out, n, c)
    changed_rows = np.flatnonzero(changed)
    flagged_rows = (np.flatnonzero(~changed & (best > given_score + 1e-9)) if scores is not None
                    else np.zeros(0, np.int64))
    items = np.concatenate([changed_rows, flagged_rows]).astype(np.int64)
    proposal = np.concatenate([suggested[changed_rows], np.zeros(len(flagged_rows), np.int64)])
    p = best[items].copy()
    if scores is not None:
        for start in range(0, len(items), _BLOCK):
            rows = items[start:start + _BLOCK]
            block = np.asarray(scores[rows], dtype=np.float64)
            flagged = start + np.flatnonzero(np.arange(start, start + len(rows)) >= len(changed_rows))
            if flagged.size:
                local = flagged - start
                top = block[local].argmax(axis=1)
                proposal[flagged] = top
            local_all = np.arange(len(rows))
            p[start:start + len(rows)] = block[local_all, proposal[start:start + len(rows)]]
    kind = np.concatenate([np.full(len(changed_rows), CHANGED, np.int8), np.full(len(flagged_rows), FLAGGED, np.int8)])
    keep = ~((kind == FLAGGED) & (proposal == given[items]))  # a tie in the rounded CSV scores
    return Results(out=out, summary=summary, class_names=names, given=given, suggested=suggested, best_score=best,
                   given_score=given_score, changed=changed, items=items[keep], proposal=proposal[keep], p=p[keep],
                   kind=kind[keep], has_scores=scores is not None)

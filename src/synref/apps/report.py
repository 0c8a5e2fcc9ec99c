"""The HTML report of a results folder (``synref report OUT``).

:func:`write_report` reads what ``synref refine --out OUT`` wrote (``summary.json``,
``refined_labels.csv``, optional ``scores.npy``; formats in DEVELOPERS.md) and writes
``OUT/report.html`` atomically. :func:`render_report` is the pure part: data in, one HTML string
out. Only the images the page shows are opened: the gallery's samples from their files (the CSV's
``path``; arrays such as digits or CIFAR are reloaded from ``summary["data"]`` and indexed) and a
few anchors per shown class from the anchor set (``summary["anchors"]["dir"]``).

The page is a single self-contained file -- inline CSS, every image a base64 ``data:`` PNG, no
script and no external request -- with: the run's settings, the counts per class before and
after, the given -> suggested transition heatmap, score histograms with how the run decided (a score
rule's threshold marked; the posterior's decision explained, :mod:`~synref.apps.report_decision`),
and a gallery of the changed samples (most confident first) beside anchors of their given and
suggested classes. Every class name, path and id is HTML-escaped.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .. import __version__
from ..errors import InputError, one_line
from ..io import check_output_file, npy_problem, read_csv_text, read_json_object, write_text
from ..validation import check_count
from .report_decision import DecisionStory, anchors_text, decision_story

PathLike = Union[str, os.PathLike]
#: ``index -> (H, W, C) uint8 image`` or None when it cannot be read (shown as a placeholder).
ImageOf = Callable[[int], Optional[np.ndarray]]

#: Columns refined_labels.csv must have (the others are optional for the report).
REQUIRED_COLUMNS = ("index", "given_label", "suggested_label", "best_score", "given_score", "changed")

#: Pixel size the longer side of a gallery image / an anchor thumbnail is brought to.
IMAGE_PX = 96
ANCHOR_PX = 48
#: Classes above which the heatmap has no per-cell numbers.
ANNOTATE_MAX_CLASSES = 20


# =============================================================================== loading
def _read_summary(path: Path, out: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{out} has no summary.json: run synref refine first")
    return read_json_object(path, "summary")


def iter_csv_rows(path: Path) -> Iterator[Dict[str, str]]:
    """The rows of a ``refined_labels.csv`` as string dicts, one at a time; InputError naming the
    file when a required column is missing or it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in fields]
            if missing:
                raise InputError(f"{path} has no column {missing[0]!r} (columns: {', '.join(fields) or 'none'})")
            yield from reader
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {one_line(exc)}") from None


def _read_rows(path: Path, out: Path) -> "ResultRows":
    if not path.is_file():
        raise InputError(f"{out} has no refined_labels.csv: run synref refine first")
    return ResultRows.from_csv(path)


def _read_npy(path: Path, out: Path, *, required: bool = True) -> Optional[np.ndarray]:
    if not path.is_file():
        if not required:
            return None
        raise InputError(f"{out} has no {path.relative_to(out)}: run synref refine first")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a bad file
        raise InputError(f"cannot read {path}: {npy_problem(exc)}") from None


def _open_image(path: str, channels: int) -> Optional[np.ndarray]:
    """One image file at its own size (None when it cannot be read)."""
    from ..data.decode import decode_image

    try:
        return decode_image(path, None, channels)
    except InputError:
        return None


def sample_images(summary: Mapping[str, Any], rows: Union["ResultRows", Sequence[Mapping[str, Any]]]) -> ImageOf:
    """``index -> image`` of the results' samples, opened one at a time when asked: from the
    file in the row's ``path`` -- only when that file is the row's sample (same id) of the dataset
    recorded in ``summary["data"]``, so an edited CSV cannot embed another file; for a dataset
    without files (digits, CIFAR arrays) the dataset is loaded once, at the first call."""
    table = rows if isinstance(rows, ResultRows) else ResultRows.from_dicts(rows, "rows", check=False)
    channels = 1 if summary.get("channels") == 1 else 3
    loaded: Dict[str, Any] = {}

    def dataset() -> Any:
        if "dataset" not in loaded:
            from ..data import load_dataset

            try:
                loaded["dataset"] = load_dataset(str(summary.get("data")), split=str(summary.get("split") or "train"),
                                                 check_files=False)  # a missing file is one placeholder
            except InputError:
                loaded["dataset"] = None
        return loaded["dataset"]

    def dataset_files() -> Dict[str, str]:
        """file -> id of the recorded dataset's samples."""
        if "files" not in loaded:
            ds = dataset()
            loaded["files"] = {} if ds is None or ds.paths is None else {
                os.path.normpath(os.path.abspath(p)): str(i) for p, i in zip(ds.paths, ds.ids)}
        return loaded["files"]

    def image_of(index: int) -> Optional[np.ndarray]:
        at = np.flatnonzero(table.index == index)
        ident, path = table.strings(int(at[0])) if at.size else ("", "")
        if path:
            if dataset_files().get(os.path.normpath(os.path.abspath(path))) != ident:
                return None  # not this sample's file of the recorded dataset: never opened
            return _open_image(path, channels)
        ds = dataset()
        images = None if ds is None else ds.images
        return None if images is None or not 0 <= index < len(images) else np.asarray(images[index])

    return image_of


def _anchor_folder(summary: Mapping[str, Any], out: Path) -> Optional[Path]:
    """The anchor set of the run: ``summary["anchors"]["dir"]``, else ``OUT/anchors``."""
    anchors = summary.get("anchors")
    candidates = []
    if isinstance(anchors, Mapping) and anchors.get("dir"):
        candidates.append(Path(str(anchors["dir"])))
    elif isinstance(anchors, str) and anchors:
        candidates.append(Path(anchors))
    candidates.append(out / "anchors")
    return next((c for c in candidates if c.is_dir()), None)


def anchor_images(summary: Mapping[str, Any], out: Path, class_names: Sequence[str]
                  ) -> Tuple[Optional[ImageOf], Optional[np.ndarray]]:
    """``(index -> anchor image, anchor labels (M,))`` of the run's anchor set, relabelled to
    ``class_names``; nothing is decoded until asked. ``(None, None)`` when the folder is gone."""
    from ..anchors import load_matched_anchors

    folder = _anchor_folder(summary, out)
    if folder is None:
        return None, None
    try:
        anchors, _ = load_matched_anchors(folder, list(class_names), decode=False)
    except InputError as exc:
        raise InputError(f"anchor set {folder}: {one_line(exc)}") from None
    paths = list(anchors.paths or [])
    channels = 1 if summary.get("channels") == 1 else 3
    return (lambda i: _open_image(paths[i], channels)), anchors.labels


def load_results(out_dir: PathLike) -> Dict[str, Any]:
    """Read a results folder: ``{summary, rows, images, anchor_images, anchor_labels, scores}``.

    ``rows`` is the CSV as columns (:class:`ResultRows`); ``images`` / ``anchor_images`` are ``index ->
    image`` functions (:func:`sample_images`, :func:`anchor_images`; nothing decoded yet);
    ``scores`` is None without ``scores.npy``. Raises InputError naming the missing or
    unreadable file.
    """
    out = Path(out_dir)
    if not out.exists():
        raise InputError(f"results folder not found: {out}")
    if not out.is_dir():
        raise InputError(f"not a results folder (not a directory): {out}")
    summary = _read_summary(out / "summary.json", out)
    rows = _read_rows(out / "refined_labels.csv", out)
    scores = _read_npy(out / "scores.npy", out, required=False)  # memory-mapped: only shown rows are read
    anchors, labels = anchor_images(summary, out, _class_names(summary, rows))
    # given embeddings without --data: no image behind the rows (cards without pictures)
    images = sample_images(summary, rows) if str(summary.get("data") or "").strip() else None
    return {"summary": summary, "rows": rows, "images": images, "anchor_images": anchors,
            "anchor_labels": labels, "scores": scores,
            "_files": {"scores": out / "scores.npy", "rows": out / "refined_labels.csv",
                       "summary": out / "summary.json", "anchors": "anchor set"}}


def write_report(out_dir: PathLike, *, max_gallery: int = 60, anchors_per_side: int = 4) -> Path:
    """Write ``OUT/report.html`` for the results folder ``out_dir``; returns its path.

    Nothing is written unless the whole page rendered (atomic write). Raises InputError
    naming the file when a piece of the folder is missing or corrupt.
    """

    check_count(max_gallery, "max_gallery", minimum=0)
    check_count(anchors_per_side, "anchors_per_side", minimum=0)
    out = Path(out_dir)
    check_output_file(out / "report.html", "OUT")
    data = load_results(out)
    files = data.pop("_files")
    text = render_report(data["summary"], data["rows"], data["images"], data["anchor_images"],
                         data["anchor_labels"], data["scores"], max_gallery=max_gallery,
                         anchors_per_side=anchors_per_side, _files=files)
    path = out / "report.html"
    write_text(path, text)
    return path


# =============================================================================== validation
_TRUE = {"yes", "true", "1", "y"}
_FALSE = {"no", "false", "0", "n", ""}


def _parse_bool(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected yes/no, got {value!r}")


def _parse_float(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return float("nan")
    return float(value)


class ResultRows:
    """``refined_labels.csv`` as columns: (N,) ``index``, ``given_label``, ``suggested_label``
    (int64), ``best_score``, ``given_score``, ``label_quality`` (float64), ``changed`` (bool).
    Read block by block with pandas' C parser (no Python object per row); the string columns
    (``id``, ``path``) are read only for the rows a page shows (:meth:`prefetch`)."""

    NUMERIC = ("index", "given_label", "suggested_label", "best_score", "given_score", "label_quality")

    def __init__(self, columns: Dict[str, np.ndarray], source: str, *, path: Optional[Path] = None,
                 strings: Optional[Dict[int, Tuple[str, str]]] = None) -> None:
        self.index = columns["index"].astype(np.int64)
        self.given_label = columns["given_label"].astype(np.int64)
        self.suggested_label = columns["suggested_label"].astype(np.int64)
        self.best_score = columns["best_score"].astype(np.float64)
        self.given_score = columns["given_score"].astype(np.float64)
        self.label_quality = columns["label_quality"].astype(np.float64)
        self.changed = columns["changed"].astype(bool) | (self.given_label != self.suggested_label)
        self.source, self._path = source, path
        self._strings: Dict[int, Tuple[str, str]] = dict(strings or {})
        self._position = {int(i): k for k, i in enumerate(self.index)} if strings is None and path is None else None

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def from_csv(cls, path: Path) -> "ResultRows":
        """The numeric columns of the CSV ``path``; InputError naming the file and the row."""
        import pandas as pd

        source = str(path)
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"cannot read {path}: {one_line(exc)}") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise InputError(f"{path} has no column {missing[0]!r} (columns: {', '.join(header) or 'none'})")
        wanted = [c for c in cls.NUMERIC + ("changed",) if c in header]
        parts: Dict[str, List[np.ndarray]] = {c: [] for c in wanted}
        offset = 0
        try:
            for block in pd.read_csv(path, usecols=wanted, chunksize=1 << 16, dtype={"changed": str},
                                     keep_default_na=False, na_values={c: [""] for c in cls.NUMERIC}):
                for name in wanted:
                    column = block[name]
                    if name == "changed":
                        values = column.str.strip().str.lower()
                        ok = values.isin(list(_TRUE | _FALSE))
                        if not ok.all():
                            row = offset + int(np.flatnonzero(~ok.to_numpy())[0])
                            raise InputError(f"{source} row {row + 1}: bad value (expected yes/no, got "
                                             f"{column.iloc[row - offset]!r})")
                        parts[name].append(values.isin(list(_TRUE)).to_numpy())
                        continue
                    numbers = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
                    bad = np.isnan(numbers) & (column.astype(str).str.strip() != "").to_numpy() \
                        if column.dtype == object else np.zeros(len(numbers), bool)
                    if name in ("index", "given_label", "suggested_label"):
                        bad |= ~np.isfinite(numbers) | (numbers != np.round(numbers))
                    if bad.any():
                        row = offset + int(np.flatnonzero(bad)[0])
                        raise InputError(f"{source} row {row + 1}: bad value ({name} "
                                         f"{column.iloc[row - offset]!r})")
                    parts[name].append(numbers)
                offset += len(block)
        except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
            raise InputError(f"cannot read {path}: {one_line(exc)}") from None
        columns = {name: (np.concatenate(parts[name]) if parts[name] else np.zeros(0)) for name in wanted}
        columns.setdefault("label_quality", np.full(offset, np.nan))
        return cls(columns, source, path=path)

    @classmethod
    def from_dicts(cls, rows: Sequence[Mapping[str, Any]], source: str, *, check: bool = True) -> "ResultRows":
        """Rows as dicts (strings as ``csv.DictReader`` gives them, or typed values)."""
        columns: Dict[str, List[Any]] = {name: [] for name in cls.NUMERIC + ("changed",)}
        strings: Dict[int, Tuple[str, str]] = {}
        for i, row in enumerate(rows):
            where = f"{source} row {i + 1}"
            missing = [c for c in REQUIRED_COLUMNS if c not in row]
            if missing:
                if not check:
                    continue
                raise InputError(f"{where} has no {missing[0]!r}")
            try:
                index = int(str(row["index"]).strip())
                values = (index, int(str(row["given_label"]).strip()), int(str(row["suggested_label"]).strip()),
                          _parse_float(row["best_score"]), _parse_float(row["given_score"]),
                          _parse_float(row.get("label_quality")), _parse_bool(row["changed"]))
            except (TypeError, ValueError) as exc:
                if not check:
                    continue
                raise InputError(f"{where}: bad value ({one_line(exc)})") from None
            for name, value in zip(cls.NUMERIC + ("changed",), values):
                columns[name].append(value)
            strings[len(columns["index"]) - 1] = (read_csv_text(str(row.get("id") or index)),
                                                  read_csv_text(str(row.get("path") or "")))
        return cls({name: np.asarray(values) for name, values in columns.items()}, source, strings=strings)

    def check(self, num_classes: int, num_images: int) -> None:
        """InputError naming the first row with a label outside [0, C) or an index outside the samples."""
        for name in ("given_label", "suggested_label"):
            values = getattr(self, name)
            bad = np.flatnonzero((values < 0) | (values >= num_classes))
            if bad.size:
                raise InputError(f"{self.source} row {bad[0] + 1}: {name} {values[bad[0]]} is outside "
                                 f"[0, {num_classes})")
        if num_images >= 0:
            bad = np.flatnonzero((self.index < 0) | (self.index >= num_images))
            if bad.size:
                raise InputError(f"{self.source} row {bad[0] + 1}: index {self.index[bad[0]]} is outside the "
                                 f"{num_images} samples")

    def prefetch(self, positions: Sequence[int]) -> None:
        """Read ``id`` and ``path`` of the rows at ``positions`` (one streamed pass over the CSV)."""
        wanted = {int(p) for p in positions} - set(self._strings)
        if not wanted or self._path is None:
            return
        with open(self._path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            id_col = header.index("id") if "id" in header else None
            path_col = header.index("path") if "path" in header else None
            last = max(wanted)
            for pos, row in enumerate(reader):
                if pos in wanted:  # (cells synref neutralised against spreadsheet formulas read back)
                    self._strings[pos] = (read_csv_text(row[id_col]) if id_col is not None and id_col < len(row)
                                          else "",
                                          read_csv_text(row[path_col]) if path_col is not None and path_col < len(row)
                                          else "")
                if pos >= last:
                    break

    def strings(self, position: int) -> Tuple[str, str]:
        """(id, path) of the row at ``position`` (read on demand)."""
        if position not in self._strings:
            self.prefetch([position])
        ident, path = self._strings.get(position, ("", ""))
        return ident or str(int(self.index[position])), path

    def path_of(self, index: int) -> str:
        """The ``path`` of the sample ``index`` ("" when none)."""
        matches = np.flatnonzero(self.index == index)
        return self.strings(int(matches[0]))[1] if matches.size else ""

    def gallery(self, limit: int) -> np.ndarray:
        """Positions of the ``limit`` most confident changed rows (best - given score, then best
        score, descending; then index): a partial selection, not a sort of all N."""
        changed = np.flatnonzero(self.changed)
        if changed.size == 0 or limit <= 0:
            return changed[:0]
        margin = self.best_score[changed] - self.given_score[changed]
        key_margin = np.where(np.isfinite(margin), -margin, np.inf)
        key_best = np.where(np.isfinite(self.best_score[changed]), -self.best_score[changed], np.inf)
        if changed.size > limit:  # keep every row that can tie with the limit-th margin, then sort those
            cut = np.partition(key_margin, limit - 1)[limit - 1]
            keep = key_margin <= cut
            changed, key_margin, key_best = changed[keep], key_margin[keep], key_best[keep]
        order = np.lexsort((self.index[changed], key_best, key_margin))
        return changed[order[:limit]]


def _as_images(array: Any, what: str) -> np.ndarray:
    images = np.asarray(array)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise InputError(f"{what} must be (N, H, W, C) with C in 1 or 3, got shape {images.shape}")
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.size and float(np.nanmax(images)) <= 1.0:
            images = images * 255.0
        images = np.clip(np.nan_to_num(images), 0, 255).astype(np.uint8)
    return images


def _class_names(summary: Mapping[str, Any], table: "ResultRows") -> List[str]:
    names = summary.get("class_names")
    if isinstance(names, (list, tuple)) and names:
        return [str(n) for n in names]
    num = summary.get("num_classes")
    if isinstance(num, int) and num > 0:
        return [str(i) for i in range(num)]
    top = max(int(table.given_label.max(initial=-1)), int(table.suggested_label.max(initial=-1)))
    return [str(i) for i in range(top + 1)]


# =============================================================================== images
def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _to_pil(image: np.ndarray, target: int):
    """A PIL image whose longer side is about ``target`` px: small images are upscaled by an
    integer factor with NEAREST (crisp pixels), large ones shrunk with LANCZOS."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    pil = Image.fromarray(np.ascontiguousarray(arr))
    h, w = arr.shape[:2]
    side = max(h, w, 1)
    if side < target:
        factor = max(1, int(round(target / side)))
        pil = pil.resize((w * factor, h * factor), Image.NEAREST)
    elif side > target * 1.5:
        scale = target / side
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    return pil


def image_data_uri(image: np.ndarray, target: int = IMAGE_PX) -> str:
    """One (H, W, C) uint8 image as a ``data:image/png;base64,...`` URI, about ``target`` px."""
    buf = io.BytesIO()
    _to_pil(image, target).save(buf, format="PNG", optimize=True)
    return _png_uri(buf.getvalue())


def _strip_uri(images: Sequence[np.ndarray], target: int, gap: int = 3) -> Tuple[str, int, int]:
    """Several images side by side on white, as one PNG data URI; returns (uri, width, height)."""
    from PIL import Image

    tiles = [_to_pil(img, target).convert("RGB") for img in images]
    height = max(t.height for t in tiles)
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, (height - tile.height) // 2))
        x += tile.width + gap
    buf = io.BytesIO()
    strip.save(buf, format="PNG", optimize=True)
    return _png_uri(buf.getvalue()), width, height


def _pick_anchors(anchor_labels: np.ndarray, num_classes: int, k: int) -> Dict[int, np.ndarray]:
    """Up to ``k`` anchor indices per class, spread evenly over that class's anchors."""
    picks: Dict[int, np.ndarray] = {}
    for c in range(num_classes):
        idx = np.flatnonzero(anchor_labels == c)
        if idx.size and k:
            take = np.unique(np.linspace(0, idx.size - 1, num=min(k, idx.size)).round().astype(int))
            picks[c] = idx[take]
    return picks


# =============================================================================== plots
def _mpl_text(name: str, limit: int = 18) -> str:
    """A class name for matplotlib: shortened, with ``$`` escaped (no mathtext)."""
    name = str(name)
    if len(name) > limit:
        name = name[: limit - 1] + "\u2026"
    return name.replace("$", r"\$")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _fig_uri(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return _png_uri(buf.getvalue())


def _tick_fontsize(num: int) -> float:
    return 9.0 if num <= 12 else 7.0 if num <= 30 else 5.0 if num <= 60 else 4.0


def _plot_counts(names: Sequence[str], before: np.ndarray, after: np.ndarray) -> str:
    c = len(names)
    fig = (_figure(max(6.0, 0.45 * c + 1.5), 3.4) if c <= ANNOTATE_MAX_CLASSES
           else _figure(min(max(8.0, 0.11 * c + 2.0), 11.5), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(c)
    width = 0.4
    ax.bar(x - width / 2, before, width, label="before (given)", color="#9db4d3")
    ax.bar(x + width / 2, after, width, label="after (refined)", color="#2b6cb0")
    ax.set_xticks(x)
    ax.set_xticklabels([_mpl_text(n) for n in names], fontsize=_tick_fontsize(c),
                       rotation=0 if c <= 10 and max((len(n) for n in names), default=0) <= 6 else 90)
    ax.set_xlim(-0.7, c - 0.3)
    ax.set_ylabel("samples")
    ax.set_ylim(0, max(1, int(max(before.max(initial=0), after.max(initial=0)))) * 1.22)
    ax.set_title("Samples per class, before and after refinement", fontsize=10)
    ax.legend(fontsize=8, frameon=False, ncol=2, loc="upper center")
    ax.spines[["top", "right"]].set_visible(False)
    return _fig_uri(fig)


def _plot_transitions(names: Sequence[str], transitions: np.ndarray) -> str:
    c = len(names)
    side = min(max(4.5, 0.42 * c + 2.0), 11.0)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    data = np.ma.masked_equal(transitions.astype(float), 0)
    vmax = max(1.0, float(transitions.max()) if transitions.size else 1.0)
    im = ax.imshow(data, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest", aspect="equal")
    ax.set_facecolor("#f7f7f7")
    labels = [_mpl_text(n) for n in names]
    fs = _tick_fontsize(c)
    if c <= 100:
        ax.set_xticks(np.arange(c))
        ax.set_yticks(np.arange(c))
        ax.set_xticklabels(labels, fontsize=fs, rotation=90)
        ax.set_yticklabels(labels, fontsize=fs)
    ax.set_xlabel("suggested class")
    ax.set_ylabel("given class")
    ax.set_title("Changed labels: given \u2192 suggested", fontsize=10)
    if c <= ANNOTATE_MAX_CLASSES:
        for (i, j), value in np.ndenumerate(transitions):
            if value:
                ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=8 if c <= 12 else 6,
                        color="white" if value > 0.55 * vmax else "#1a202c")
    if c <= 40:
        ax.set_xticks(np.arange(-0.5, c, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, c, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="samples",
                 ticks=MaxNLocator(nbins=6, integer=True))
    return _fig_uri(fig)


def _hist_bins(values: np.ndarray, threshold: Optional[float]) -> np.ndarray:
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if threshold is not None and math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, 41)


def _plot_hist(values: np.ndarray, changed: np.ndarray, threshold: Optional[float], *, title: str,
               xlabel: str) -> str:
    fig = _figure(5.6, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    values = np.asarray(values, dtype=float)
    bins = _hist_bins(values, threshold)
    ok = np.isfinite(values)
    ax.hist([values[ok & ~changed], values[ok & changed]], bins=bins, stacked=True,
            color=["#a0aec0", "#dd6b20"], label=[f"unchanged ({int((~changed).sum())})",
                                                 f"changed ({int(changed.sum())})"])
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="#c53030", linestyle="--", linewidth=1.5)
        right = threshold <= bins[0] + 0.7 * (bins[-1] - bins[0])
        ax.annotate(f"threshold = {threshold:g}", xy=(threshold, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(4 if right else -4, -4), textcoords="offset points", color="#c53030",
                    fontsize=8, va="top", ha="left" if right else "right",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.spines[["top", "right"]].set_visible(False)
    return _fig_uri(fig)


# =============================================================================== HTML
_CSS = """
:root{--fg:#1a202c;--muted:#5a6678;--line:#e2e8f0;--bg:#f5f7fa;--card:#fff;--accent:#2b6cb0;
--given:#c05621;--sugg:#2f855a}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif}
.container{max-width:1200px;margin:0 auto;padding:24px 20px 48px}
header h1{margin:0 0 4px;font-size:26px}
header .sub{margin:0 0 16px;color:var(--muted);word-break:break-all}
h2{font-size:19px;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;
margin:18px 0}
nav{display:flex;flex-wrap:wrap;gap:6px 16px;margin:8px 0 0;font-size:13px}
nav a{color:var(--accent);text-decoration:none}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:10px;margin:0}
.fact{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 12px;min-width:0}
.fact dt{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.fact dd{margin:2px 0 0;font-weight:600;overflow-wrap:anywhere}
.fact.big dd{font-size:20px}
.note{color:var(--muted);font-size:13px;margin:8px 0}
.warn{background:#fffaf0;border:1px solid #f6ad55;border-radius:6px;padding:6px 10px;font-size:13px}
.plot{max-width:100%;height:auto;display:block;margin:0 auto}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.row>.grow{flex:1 1 480px;min-width:0}
.row>.side{flex:0 1 380px;min-width:280px}
.below{max-width:640px;margin:14px auto 0}
.table-wrap{max-height:380px;overflow:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{padding:4px 10px;text-align:right;border-bottom:1px solid var(--line);white-space:nowrap}
th{background:#edf2f7;position:sticky;top:0}
td.name,th.name{text-align:left;white-space:normal;overflow-wrap:break-word;max-width:260px}
td.up{color:var(--sugg)} td.down{color:var(--given)}
.hists{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
.card{display:flex;gap:14px;border:1px solid var(--line);border-radius:10px;padding:12px;background:#fff;
min-width:0}
.card .main{flex:0 0 auto;text-align:center}
.card .main img{display:block;border:1px solid var(--line);border-radius:4px;image-rendering:pixelated;
background:#fff}
.card .rank{font-size:11px;color:var(--muted);margin-top:4px}
.card .body{flex:1 1 auto;min-width:0}
.label-line{font-size:14px;margin:0 0 4px}
.given{color:var(--given);font-weight:600}
.sugg{color:var(--sugg);font-weight:600}
.arrow{color:var(--muted);padding:0 4px}
.meta{font-size:12px;color:var(--muted);overflow-wrap:anywhere;margin:0 0 6px}
.strip{margin:4px 0 0}
.strip .cap{font-size:11px;color:var(--muted);margin-bottom:2px;overflow-wrap:anywhere}
.strip .cap b{color:var(--fg);font-weight:600}
.strip img{display:block;max-width:100%;height:auto;image-rendering:pixelated;border-radius:3px}
.strip.none{font-size:12px;color:var(--muted)}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:24px}
@media (max-width:600px){.gallery{grid-template-columns:1fr}.card{flex-direction:column}
.hists{grid-template-columns:1fr}}
"""


_SEP = " \u00b7 "


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "\u2014"
    if isinstance(value, float):
        return "\u2014" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _fmt_setting(value: Any) -> str:
    if value is None or value == "":
        return "\u2014"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _fmt_seconds(value: Any) -> str:
    try:
        s = float(value)
    except (TypeError, ValueError):
        return "\u2014"
    if not math.isfinite(s):
        return "\u2014"
    if s < 120:
        return f"{s:.1f} s"
    m, s = divmod(s, 60)
    if m < 120:
        return f"{int(m)} min {int(s)} s"
    h, m = divmod(m, 60)
    return f"{int(h)} h {int(m)} min"


def _header(summary: Mapping[str, Any], n: int, c: int, num_changed: int, version: str) -> str:
    pct = 100.0 * num_changed / n if n else 0.0
    size = summary.get("image_size")
    size_text = (f"{size[0]}\u00d7{size[1]}" if isinstance(size, (list, tuple)) and len(size) == 2
                 else _fmt_setting(size))
    if summary.get("channels") is not None:
        size_text += f" \u00d7 {summary.get('channels')} ch"
    decision = summary.get("decision") if isinstance(summary.get("decision"), Mapping) else {}
    facts = [
        ("samples (N)", f"{n:,}", True),
        ("classes (C)", f"{c:,}", True),
        ("labels changed", f"{num_changed:,} ({pct:.1f}%)", True),
        ("refiner", _fmt_setting(summary.get("refiner")), False),
        *decision_story(summary).facts,  # what decided: the score rule's settings, or the posterior's
        ("encoder", _fmt_setting(summary.get("features")), False),
        ("classifier", _fmt_setting(summary.get("classifier")), False),
        ("anchors", anchors_text(summary.get("anchors")), False),
        ("anchor images", _fmt_setting(summary.get("num_anchors")), False),
        ("labels file", _fmt_setting(summary.get("labels_file")), False),
        ("working image size", size_text, False),
        ("run time", _fmt_seconds(summary.get("seconds")), False),
        ("synref version", version, False),
    ]
    cells = "".join(f'<div class="fact{" big" if big else ""}"><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>'
                    for k, v, big in facts)
    dataset = _fmt_setting(summary.get("data"))
    nav = ("<nav><a href='#counts'>Counts per class</a><a href='#transitions'>Transitions</a>"
           "<a href='#scores'>Scores</a><a href='#gallery'>Changed samples</a></nav>")
    skipped = summary.get("skipped") or []
    skipped_html = ""
    if isinstance(skipped, list) and skipped:
        items = "".join(f"<li>{_e(s.get('file', '?') if isinstance(s, dict) else s)}: "
                        f"{_e(s.get('reason', '') if isinstance(s, dict) else '')}</li>" for s in skipped[:50])
        more = f"<li>\u2026 and {len(skipped) - 50} more</li>" if len(skipped) > 50 else ""
        skipped_html = (f'<details class="warn" style="margin-top:12px"><summary>{len(skipped)} input '
                        f'file(s) skipped</summary><ul>{items}{more}</ul></details>')
    check = decision.get("model_check") or "passed"
    check_html = ("" if check == "passed" else
                  f'<p class="warn" style="margin-top:12px">model check {_e(check)}</p>')
    if decision.get("minimum_evidence", "met") != "met":
        check_html += f'<p class="warn" style="margin-top:12px">{_e(decision["minimum_evidence"])}</p>'

    return (f'<header id="summary"><h1>synref report</h1><p class="sub">dataset: <b>{_e(dataset)}</b></p>'
            f'<dl class="facts">{cells}</dl>{check_html}{skipped_html}{nav}</header>')


def _plot_and_table(img: str, table: str, *, wide: bool) -> str:
    """Plot beside its table; for many classes the plot takes the full width, the table below."""
    if wide:
        return f'<div>{img}</div><div class="below">{table}</div>'
    return (f'<div class="row"><div class="grow">{img}</div>'
            f'<div class="side">{table}</div></div>')


def _counts_section(names: Sequence[str], before: np.ndarray, after: np.ndarray, warning: str) -> str:
    rows = []
    for i, name in enumerate(names):
        delta = int(after[i]) - int(before[i])
        cls = "up" if delta > 0 else "down" if delta < 0 else ""
        rows.append(f'<tr><td>{i}</td><td class="name">{_e(name)}</td><td class="before">{int(before[i])}</td>'
                    f'<td class="after">{int(after[i])}</td><td class="{cls}">{delta:+d}</td></tr>')
    table = ('<div class="table-wrap"><table class="counts"><thead><tr><th>#</th><th class="name">class</th>'
             '<th>before</th><th>after</th><th>change</th></tr></thead><tbody>'
             + "".join(rows) + "</tbody></table></div>")
    plot = _plot_counts(names, before, after)
    warn = f'<p class="warn">{_e(warning)}</p>' if warning else ""
    img = f'<img class="plot" alt="samples per class before and after" src="{plot}">'
    return (f'<section id="counts"><h2>Counts per class</h2>{warn}'
            f'{_plot_and_table(img, table, wide=len(names) > ANNOTATE_MAX_CLASSES)}</section>')


def _transitions_section(names: Sequence[str], transitions: np.ndarray) -> str:
    total = int(transitions.sum())
    if total == 0:
        return ('<section id="transitions"><h2>Transitions (given \u2192 suggested)</h2>'
                '<p class="note">No labels were changed.</p></section>')
    plot = _plot_transitions(names, transitions)
    flat = [(int(transitions[i, j]), i, j) for i, j in zip(*np.nonzero(transitions))]
    flat.sort(key=lambda t: (-t[0], t[1], t[2]))
    top = "".join(f'<tr><td class="name">{_e(names[i])}</td><td class="name">{_e(names[j])}</td>'
                  f'<td>{n}</td><td>{100.0 * n / total:.1f}%</td></tr>' for n, i, j in flat[:15])
    note = (f'<p class="note">{len(names)} classes: per-cell counts are in the table.</p>'
            if len(names) > ANNOTATE_MAX_CLASSES else "")
    table = ('<div class="table-wrap" style="max-height:none"><table class="transitions"><thead><tr><th class="name">given</th>'
             '<th class="name">suggested</th><th>samples</th><th>share</th></tr></thead><tbody>'
             + top + "</tbody></table></div>")
    img = f'<img class="plot" alt="transition heatmap" src="{plot}">'
    return (f'<section id="transitions"><h2>Transitions (given \u2192 suggested)</h2>'
            f'<p class="note">{total:,} changed labels over {len(flat):,} class pairs; rows are the given '
            f'class, columns the suggested one. The most frequent pairs are listed.</p>{note}'
            f'{_plot_and_table(img, table, wide=len(names) > ANNOTATE_MAX_CLASSES)}</section>')


def _scores_section(best: np.ndarray, given: np.ndarray, changed: np.ndarray, story: DecisionStory) -> str:
    """The histograms of the best and the given label's score, with how the run decided (a score
    rule's threshold as a dashed line; the posterior's decision in words)."""
    name = story.score_name
    h1 = _plot_hist(best, changed, story.threshold, title=f"Best {name} (all samples)", xlabel=f"best {name}")
    h2 = _plot_hist(given, changed, story.threshold, title=f"{name.capitalize()} of the given label",
                    xlabel=f"given-label {name}")
    return (f'<section id="scores"><h2>Scores</h2><p class="note">{_e(story.note)}</p><div class="hists">'
            f'<img class="plot" alt="best {name} histogram" src="{h1}">'
            f'<img class="plot" alt="given-label {name} histogram" src="{h2}"></div></section>')


def _gallery_section(order: List[Dict[str, Any]], num_changed: int, names: Sequence[str],
                     image_of: Optional[ImageOf], strips: Dict[int, Tuple[str, int, int]],
                     scores: Optional[np.ndarray]) -> str:
    if num_changed == 0:
        return ('<section id="gallery"><h2>Changed samples</h2><p class="note">No labels were changed.'
                '</p></section>')
    cards = []
    for rank, row in enumerate(order, 1):
        g, s = row["given_label"], row["suggested_label"]
        pixels = image_of(row["index"]) if image_of is not None else None
        img = image_data_uri(np.full((IMAGE_PX, IMAGE_PX, 3), 220, np.uint8) if pixels is None
                             else _as_images(pixels[None], "image")[0], IMAGE_PX)
        meta = [f"id: {_e(row['id'])}"]
        if row["path"] and row["path"] != row["id"]:
            meta.append(f"path: {_e(row['path'])}")
        meta.append(f"index {row['index']}")
        if pixels is None and image_of is not None:
            meta.append("image could not be opened")
        if math.isfinite(row["label_quality"]):
            meta.append(f"label quality {row['label_quality']:.3f}")
        top_html = ""
        if scores is not None:
            srow = scores[row["index"]]
            top = np.argsort(-srow, kind="stable")[:3]
            top_html = ('<p class="meta">top scores: '
                        + ", ".join(f"{_e(names[k])} {float(srow[k]):.3f}" for k in top) + "</p>")

        def strip(label: int, role: str, css: str) -> str:
            if label not in strips:
                return f'<div class="strip none">no anchors of {_e(names[label])}</div>'
            uri, w, h = strips[label]
            return (f'<div class="strip {css}"><div class="cap">anchors of {role} class <b>'
                    f'{_e(names[label])}</b></div><img alt="anchors of {_e(names[label])}" '
                    f'width="{w}" height="{h}" src="{uri}"></div>')

        cards.append(
            f'<article class="card" data-index="{row["index"]}" data-rank="{rank}">'
            + (f'<div class="main"><img alt="sample {_e(row["id"])}" src="{img}"><div class="rank">#{rank}</div></div>'
               if image_of is not None else f'<div class="main"><div class="rank">#{rank}</div></div>')
            + f'<div class="body"><p class="label-line">given: <span class="given">{_e(names[g])}</span> '
            f'(score {_fmt(row["given_score"])})<span class="arrow">\u2192</span>suggested: '
            f'<span class="sugg">{_e(names[s])}</span> (score {_fmt(row["best_score"])})</p>'
            f'<p class="meta">{_SEP.join(meta)}</p>{top_html}'
            f'{strip(g, "given", "given-anchors")}{strip(s, "suggested", "suggested-anchors")}</div></article>')
    shown = len(order)
    note = (f'<p class="note more">Showing the {shown:,} most confident of {num_changed:,} changed samples '
            f'(raise the limit with <code>synref report OUT --max-gallery N</code>; all of them are in '
            f'refined_labels.csv).</p>' if shown < num_changed
            else f'<p class="note">All {num_changed:,} changed samples, most confident first.</p>')
    return (f'<section id="gallery"><h2>Changed samples</h2><p class="note">Ordered by confidence: the '
            f'suggested class\'s score minus the given label\'s score, highest first.</p>{note}'
            f'<div class="gallery">{"".join(cards)}</div></section>')


def _gallery_rows(table: ResultRows, limit: int) -> List[Dict[str, Any]]:
    """The gallery's rows (most confident changed first) as dicts, ids and paths read for them only."""
    positions = table.gallery(limit)
    table.prefetch(positions)
    out = []
    for pos in positions:
        ident, path = table.strings(int(pos))
        out.append({"index": int(table.index[pos]), "id": ident, "path": path,
                    "given_label": int(table.given_label[pos]), "suggested_label": int(table.suggested_label[pos]),
                    "best_score": float(table.best_score[pos]), "given_score": float(table.given_score[pos]),
                    "label_quality": float(table.label_quality[pos])})
    return out


def render_report(summary: Mapping[str, Any], rows: Union[ResultRows, Sequence[Mapping[str, Any]]],
                  images: Union[np.ndarray, ImageOf],
                  anchor_images: Union[np.ndarray, ImageOf, None], anchor_labels: Optional[np.ndarray],
                  scores: Optional[np.ndarray] = None, *, max_gallery: int = 60,
                  anchors_per_side: int = 4, _files: Optional[Mapping[str, Path]] = None) -> str:
    """The report as one self-contained HTML string.

    Args:
        summary: the ``summary.json`` dict (class_names, threshold, alpha, ... see DEVELOPERS.md).
        rows: ``refined_labels.csv`` as a :class:`ResultRows` (columns, streamed), or its rows as
            dicts (strings as read by ``csv.DictReader``, or typed values); ``index`` points into
            ``images``.
        images: (N, H, W, C) uint8 images, C in {1, 3}; or ``index -> (H, W, C) image or None``
            (only the gallery's are asked for; None is drawn as a placeholder); or None: the rows
            have no images (given embeddings), the cards show no picture.
        anchor_images: (M, H, W, C) uint8 anchors, ``index -> image``, or None (no anchor strips).
        anchor_labels: (M,) int class of each anchor.
        scores: optional (N, C) score matrix, may be memory-mapped (adds each card's top-3 classes;
            only the shown rows are read).
        max_gallery: the most changed samples shown (most confident first).
        anchors_per_side: anchors shown for the given and for the suggested class.
    Counts, transitions and #changed are computed from ``rows`` (the CSV is the truth); a
    disagreement with the summary's numbers is shown as a warning. Raises InputError on
    inconsistent inputs.
    """

    max_gallery = check_count(max_gallery, "max_gallery", minimum=0)
    anchors_per_side = check_count(anchors_per_side, "anchors_per_side", minimum=0)
    files = dict(_files or {})
    src = lambda key, default: str(files.get(key, default))  # noqa: E731
    if not isinstance(summary, Mapping):
        raise InputError(f"{src('summary', 'summary')} must be a JSON object")
    table = rows if isinstance(rows, ResultRows) else ResultRows.from_dicts(rows, src("rows", "refined_labels.csv"))
    image_of: Optional[ImageOf]
    if images is None or callable(images):
        image_of = images
        num_images = len(table)  # one CSV row per sample, indexed 0..N-1
    else:
        array = _as_images(images, src("images", "images"))
        image_of, num_images = (lambda i: array[i]), len(array)
    names = _class_names(summary, table)
    c = len(names)
    if c < 1:
        raise InputError(f"{src('summary', 'summary')} names no classes")
    table.check(c, num_images)
    n = len(table)

    scores_arr: Optional[np.ndarray] = None
    if scores is not None:
        scores_arr = scores if isinstance(scores, np.ndarray) else np.asarray(scores)
        if scores_arr.ndim != 2 or scores_arr.shape[1] != c or (n and int(table.index.max()) >= scores_arr.shape[0]):
            raise InputError(f"{src('scores', 'scores')} has shape {scores_arr.shape}, expected "
                             f"({max(num_images, n)}, {c})")

    order = _gallery_rows(table, max_gallery)
    strips: Dict[int, Tuple[str, int, int]] = {}
    if anchor_images is not None and anchor_labels is not None and anchors_per_side:
        a_lab = np.asarray(anchor_labels).reshape(-1)
        if callable(anchor_images):
            anchor_of: ImageOf = anchor_images
        else:
            a_imgs = _as_images(anchor_images, src("anchors", "anchor images"))
            if len(a_lab) != len(a_imgs):
                raise InputError(f"{src('anchors', 'anchors')}: {len(a_imgs)} anchor images but "
                                 f"{len(a_lab)} labels")
            anchor_of = lambda i: a_imgs[i]  # noqa: E731
        try:
            a_lab = a_lab.astype(np.int64)
        except (TypeError, ValueError):
            raise InputError(f"{src('anchors', 'anchors')}: labels must be integers") from None
        needed = set()
        for r in order:
            needed.update((r["given_label"], r["suggested_label"]))
        for cls, idx in _pick_anchors(a_lab, c, anchors_per_side).items():
            if cls in needed:
                tiles = [img for img in (anchor_of(int(i)) for i in idx) if img is not None]
                if tiles:
                    strips[cls] = _strip_uri(tiles, ANCHOR_PX)

    given, sugg, changed = table.given_label, table.suggested_label, table.changed
    before = np.bincount(given, minlength=c)
    after = np.bincount(sugg, minlength=c)
    transitions = np.zeros((c, c), dtype=np.int64)
    np.add.at(transitions, (given[changed], sugg[changed]), 1)
    num_changed = int(changed.sum())

    warnings: List[str] = []
    for key, ours in (("counts_before", before), ("counts_after", after)):
        theirs = summary.get(key)
        if isinstance(theirs, list) and len(theirs) == c and list(map(int, theirs)) != ours.tolist():
            warnings.append(f"summary.json {key} differs from refined_labels.csv (the table uses the CSV)")
    if isinstance(summary.get("num_changed"), int) and summary["num_changed"] != num_changed:
        warnings.append(f"summary.json says {summary['num_changed']} changed, refined_labels.csv has "
                        f"{num_changed}")
    if isinstance(summary.get("num_samples"), int) and summary["num_samples"] != n:
        warnings.append(f"summary.json says {summary['num_samples']} samples, refined_labels.csv has {n}")

    best, given_scores = table.best_score, table.given_score
    version = str(summary.get("synref_version") or __version__)
    dataset = _fmt_setting(summary.get("data"))
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>synref report \u2014 {_e(dataset)}</title><style>{_CSS}</style></head><body>",
        '<main class="container">',
        _header(summary, n, c, num_changed, version),
        _counts_section(names, before, after, "; ".join(warnings)),
        _transitions_section(names, transitions),
        _scores_section(best, given_scores, changed, decision_story(summary)),
        _gallery_section(order, num_changed, names, image_of, strips, scores_arr),
        f"<footer>Generated by synref {_e(__version__)} from the results of synref "
        f"{_e(version)}. Self-contained: no external resources.</footer>",
        "</main></body></html>\n",
    ]
    return "".join(parts)

"""The review page of a results folder: ``OUT/review.html`` (``synref review OUT``; ``synref
refine`` writes it at the end of a run, beside ``report.html``).

Every review item (each changed row, and each unchanged row whose best class is not the given
one; :mod:`synref.apps.results_folder`) is one row of the page: its thumbnail beside anchors of
the given and of the suggested class, both classes, the suggestion's probability. The person
accepts, rejects or picks another class; the decisions stay in the browser (``localStorage``,
per results) and are downloaded as ``decisions.csv`` for ``synref apply OUT --decisions``.

Files: ``OUT/review.html`` (the page, the items as JSON; every name, id and path is escaped and
only ever set as text) and ``OUT/review/``: the thumbnails, **packed sprite sheets** of small
JPEG tiles (at most ``thumb_px`` px a side; 256 tiles a sheet; the JPEG quality is lowered for a
sheet whose tiles average more than :data:`TILE_BYTES`), ``s<k>-<key>.jpg`` for the items and
``a<k>-<key>.jpg`` for the anchors, each with a ``.json`` sidecar (the tiles that could not be
read). A sheet's name holds a digest of what it shows, so a re-run (or a killed run, re-run)
reuses the sheets already written and only decodes the missing ones; sheets of an older item
list are removed (a sheet's digest covers its rows and their files' paths, sizes and times, so a
replaced image gets a new thumbnail). Thumbnails are decoded small (JPEG draft mode), never at
full size; results without images (a features-only run, images moved away) give a page without
thumbnails.
The page is written last, atomically.

Keyboard shortcuts of the page (also listed in it, key ``?``): ``j`` / ``k`` or the arrow keys
move, ``a`` accept, ``r`` reject, ``c`` choose another class, ``u`` clear the decision, ``n`` next
undecided, ``/`` search, ``?`` help.
"""
from __future__ import annotations

import html
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import __version__
from ..errors import InputError
from ..hashing import digest, images_hash
from ..io import atomic_path, check_output_file, remove_stale_temp_files, write_json, write_text
from ..progress import progress as progress_bar
from ..validation import check_count
from .report import sample_images
from .results_folder import CHANGED, Results, read_results, row_strings
from .review_assets import REVIEW_CSS, REVIEW_JS

__all__ = ["write_review", "review_data", "render_review", "tile_budget", "TILE_BYTES", "SHEET_SIDE",
           "DEFAULT_THUMB_PX", "DEFAULT_MAX_ITEMS"]

PathLike = Union[str, os.PathLike]
#: ``index -> (H, W, C) uint8 image`` or None (not readable).
ImageOf = Callable[[int], Optional[np.ndarray]]

#: Tiles a side of a sprite sheet (SHEET_SIDE ** 2 tiles a sheet).
SHEET_SIDE = 16
#: Default thumbnail side in pixels (the longer side of a tile's image).
DEFAULT_THUMB_PX = 48
#: The mean JPEG bytes a 48 px tile of a sheet may take (scaled by the tile's area for other sizes);
#: the quality is lowered until the sheet fits (a 48 px tile of pure noise: 1,464 bytes at quality
#: 80, 1,114 at 65; smooth photos fit at 80).
TILE_BYTES = 1200
#: JPEG qualities tried, best first.
_QUALITIES = (80, 65, 50, 35, 20)
#: Default most items on a page (changed first, then flagged, most probable first).
DEFAULT_MAX_ITEMS = 200_000
#: Bump when the tiles' look changes (sheets are re-made).
_SHEET_VERSION = 1
_SHEET_NAME = re.compile(r"^[sa]\d{5}-[0-9a-f]{16}\.(jpg|json)$")
_BACKGROUND = (236, 236, 236)


# =============================================================================== thumbnails
def _fit_tile(img: Any, px: int) -> Any:
    """A PIL RGB image fitted into ``px x px`` (aspect kept): large ones shrunk, small ones enlarged
    (tiny ones with crisp pixels); centred on a light background."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    side = max(w, h, 1)
    if side > px:
        img.thumbnail((px, px), Image.Resampling.BILINEAR, reducing_gap=2.0)
    elif side < px:  # tiny images: crisp pixels; small ones: smooth
        resample = Image.Resampling.NEAREST if side * 2 <= px else Image.Resampling.BICUBIC
        img = img.resize((max(1, round(w * px / side)), max(1, round(h * px / side))), resample)
    tile = Image.new("RGB", (px, px), _BACKGROUND)
    tile.paste(img, ((px - img.width) // 2, (px - img.height) // 2))
    return tile


def _file_tile(path: str, px: int) -> Optional[Any]:
    """The tile of an image file (or dataset row reference), decoded small: JPEG draft mode
    scales by 1/2..1/8 while decoding; None when it cannot be read."""
    from PIL import ImageOps

    from ..data.decode import open_image

    try:
        with open_image(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (px * 2, px * 2))
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I") or img.mode == "F":  # 16-bit / float grey: scaled to 0..255
                from PIL import Image

                arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
                img = Image.fromarray(np.clip(arr * (255.0 / max(arr.max(initial=0), 255.0)), 0, 255).astype(np.uint8))
            return _fit_tile(img, px)
    except Exception:  # unreadable, truncated, not an image: a placeholder tile
        return None


def _array_tile(image: Optional[np.ndarray], px: int) -> Optional[Any]:
    from PIL import Image

    if image is None:
        return None
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    try:
        return _fit_tile(Image.fromarray(np.ascontiguousarray(arr[..., :3] if arr.ndim == 3 else arr)), px)
    except Exception:
        return None


def _encode_sheet(tiles: Sequence[Optional[Any]], px: int) -> Tuple[bytes, int]:
    """One JPEG of the tiles (row-major, SHEET_SIDE a row; None = background); the first quality
    whose mean bytes per tile is at most :func:`tile_budget` (else the lowest). Returns (bytes,
    quality)."""
    from PIL import Image

    rows = (len(tiles) + SHEET_SIDE - 1) // SHEET_SIDE
    sheet = Image.new("RGB", (SHEET_SIDE * px, max(rows, 1) * px), _BACKGROUND)
    for k, tile in enumerate(tiles):
        if tile is not None:
            sheet.paste(tile, ((k % SHEET_SIDE) * px, (k // SHEET_SIDE) * px))
    data, quality = b"", _QUALITIES[-1]
    for quality in _QUALITIES:
        buf = io.BytesIO()
        sheet.save(buf, format="JPEG", quality=quality, optimize=True)
        data = buf.getvalue()
        if len(data) <= tile_budget(px) * max(len(tiles), 1):
            break
    return data, quality


def tile_budget(px: int) -> int:
    """The mean JPEG bytes a ``px`` tile may take: :data:`TILE_BYTES` scaled by its area."""
    return int(TILE_BYTES * (px / 48.0) ** 2)


class _Sheets:
    """Writes / reuses the sprite sheets of one kind (``s`` items, ``a`` anchors) in ``folder``."""

    def __init__(self, folder: Path, prefix: str, px: int, workers: int) -> None:
        self.folder, self.prefix, self.px, self.workers = folder, prefix, px, workers
        self.kept: List[str] = []
        self.decoded = 0

    def make(self, number: int, key_parts: Any, load: Callable[[int], Optional[Any]], count: int
             ) -> Tuple[Optional[str], List[int]]:
        """Sheet ``number`` of ``count`` tiles (``load(k)`` -> tile or None): ``(file name or None
        when no tile could be read, [positions that could not be read])``."""
        key = digest(_SHEET_VERSION, self.px, TILE_BYTES, key_parts)
        name = f"{self.prefix}{number:05d}-{key}"
        jpg, side = self.folder / f"{name}.jpg", self.folder / f"{name}.json"
        self.kept += [jpg.name, side.name]
        if side.is_file():
            try:
                meta = json.loads(side.read_text(encoding="utf-8"))
                if meta.get("all_missing") or jpg.is_file():
                    return (None if meta.get("all_missing") else jpg.name), list(meta.get("missing", []))
            except (OSError, ValueError, AttributeError):
                pass
        if self.workers > 1 and count > 1:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="synref-thumbs") as pool:
                tiles = list(pool.map(load, range(count)))
        else:
            tiles = [load(k) for k in range(count)]
        self.decoded += count
        missing = [k for k, t in enumerate(tiles) if t is None]
        if len(missing) == count:
            write_json(side, {"all_missing": True, "missing": missing})
            return None, missing
        data, quality = _encode_sheet(tiles, self.px)
        with atomic_path(jpg, fsync=False) as tmp:
            tmp.write_bytes(data)
        write_json(side, {"missing": missing, "quality": quality, "bytes": len(data), "tiles": count})
        return jpg.name, missing


# =============================================================================== data
def _order(results: Results, max_items: int) -> np.ndarray:
    """Positions into ``results.items``: changed first (if the list must be cut), most probable first."""
    p = np.nan_to_num(results.p, nan=-1.0)
    order = np.lexsort((results.items, -p))
    if len(order) > max_items:
        changed_first = np.lexsort((results.items, -p, results.kind != CHANGED))
        order = changed_first[:max_items]
        order = order[np.lexsort((results.items[order], -p[order]))]
    return order


def _image_loader(results: Results, rows: np.ndarray, paths: List[str], px: int,
                  image_of: Optional[ImageOf]) -> Callable[[int], Optional[Any]]:
    """``k -> tile`` of item ``k``: from ``image_of`` (API), the file / dataset row in its path, or
    the dataset reloaded (arrays such as digits / CIFAR, only when no item has a path)."""
    if image_of is not None:
        return lambda k: _array_tile(image_of(int(rows[k])), px)
    arrays: Optional[ImageOf] = None
    if not any(paths) and results.summary.get("path_backed") is not True and results.summary.get("data"):
        arrays = sample_images(results.summary, [{"index": int(r), "path": ""} for r in rows[:1]])

    def load(k: int) -> Optional[Any]:
        if paths[k]:
            return _file_tile(paths[k], px)
        if arrays is not None:
            return _array_tile(arrays(int(rows[k])), px)
        return None

    return load


def _anchor_paths(results: Results) -> Tuple[List[str], np.ndarray, str]:
    """(paths, labels (M,) relabelled to the results' classes, folder) of the run's anchor set:
    ``summary["anchors"]["dir"]``, else ``OUT/anchors``; nothing when it is gone or unreadable."""
    from ..anchors import load_matched_anchors

    anchors = results.summary.get("anchors")
    named = anchors.get("dir") if isinstance(anchors, dict) else anchors
    for folder in ([Path(str(named))] if named else []) + [results.out / "anchors"]:
        if folder.is_dir():
            try:
                matched, _ = load_matched_anchors(folder, results.class_names, decode=False)
            except InputError:
                break
            return list(matched.paths or []), matched.labels, str(folder)
    return [], np.zeros(0, np.int64), ""


def _pick_anchors(labels: np.ndarray, num_classes: int, per_class: int) -> Tuple[List[List[int]], List[int]]:
    """(per class its tiles' numbers, tile number -> anchor index): up to ``per_class`` anchors a
    class, spread over its anchors."""
    per: List[List[int]] = []
    chosen: List[int] = []
    for cls in range(num_classes):
        idx = np.flatnonzero(labels == cls)
        take = (idx[np.unique(np.linspace(0, idx.size - 1, num=min(per_class, idx.size)).round().astype(int))]
                if idx.size and per_class else [])
        per.append(list(range(len(chosen), len(chosen) + len(take))))
        chosen.extend(int(i) for i in take)
    return per, chosen


def review_data(results: Results, *, folder: Path, thumb_px: int = DEFAULT_THUMB_PX, anchors_per_class: int = 4,
                max_items: int = DEFAULT_MAX_ITEMS, workers: int = 2,
                image_of: Optional[ImageOf] = None) -> Dict[str, Any]:
    """The page's data (a JSON-able dict) and the sprite sheets in ``folder`` (made or reused).

    Items are columnar lists in page order (most probable first): ``index, id, path`` ("" when it
    equals the id), ``given, sugg, p, gs`` (the given label's score), ``kind`` (0 changed, 1
    flagged), ``thumb`` (tile number or -1)."""
    order = _order(results, max_items)
    rows = results.items[order]
    ids, paths = row_strings(results.out, rows)
    folder.mkdir(parents=True, exist_ok=True)
    per_sheet = SHEET_SIDE * SHEET_SIDE
    load = _image_loader(results, rows, paths, thumb_px, image_of)
    items = _Sheets(folder, "s", thumb_px, workers)
    sheets: List[Optional[str]] = []
    thumb = np.arange(len(rows), dtype=np.int64)
    data_spec = str(results.summary.get("data", ""))
    bar = progress_bar(total=len(rows), desc="review thumbnails", unit="img",
                       enabled=None if len(rows) >= 2000 else False)
    try:
        for s, start in enumerate(range(0, len(rows), per_sheet)):
            stop = min(start + per_sheet, len(rows))
            # what the sheet shows: the rows, and their files' paths, sizes and times
            parts = (data_spec, image_of is not None, rows[start:stop],
                     images_hash(None, [p for p in paths[start:stop] if p]))
            name, missing = items.make(s, parts, lambda k, start=start: load(start + k), stop - start)
            sheets.append(name)
            if name is None:
                thumb[start:stop] = -1
            else:
                thumb[np.asarray(missing, dtype=np.int64) + start] = -1
            bar.update(stop - start)
    finally:
        bar.close()

    anchor_files, anchor_labels, anchor_dir = _anchor_paths(results) if anchors_per_class else ([], None, "")
    per_class, chosen = _pick_anchors(np.asarray(anchor_labels if anchor_labels is not None else []),
                                      len(results.class_names), anchors_per_class)
    anchor_sheets: List[Optional[str]] = []
    anchor_missing: set = set()
    anchors = _Sheets(folder, "a", thumb_px, workers)
    for s, start in enumerate(range(0, len(chosen), per_sheet)):
        stop = min(start + per_sheet, len(chosen))
        files = [anchor_files[i] for i in chosen[start:stop]]
        name, missing = anchors.make(s, (anchor_dir, results.class_names, chosen[start:stop], images_hash(None, files)),
                                     lambda k, files=files: _file_tile(files[k], thumb_px), stop - start)
        anchor_sheets.append(name)
        anchor_missing.update(start + m for m in (missing if name is not None else range(stop - start)))
    items.kept += anchors.kept
    per_class = [[t for t in tiles if t not in anchor_missing] for tiles in per_class]
    _remove_stale(folder, set(items.kept))

    given = results.given[rows]
    key = digest("review", results.class_names, rows, results.proposal[order], given, data_spec)
    summary = results.summary
    return {
        "version": __version__, "key": key, "classes": results.class_names, "data": data_spec,
        "threshold": summary.get("threshold"), "refiner": summary.get("refiner"),
        "num_samples": results.num_samples, "num_items": int(len(results.items)), "shown": int(len(rows)),
        "num_changed": int(results.changed.sum()), "has_scores": results.has_scores,
        "thumbs": {"px": thumb_px, "side": SHEET_SIDE, "dir": folder.name, "sheets": sheets,
                   "anchor_sheets": anchor_sheets},
        "anchors": per_class,
        "items": {"index": [int(r) for r in rows], "id": ids,
                  "path": ["" if p == i else p for p, i in zip(paths, ids)],
                  "given": [int(g) for g in given], "sugg": [int(x) for x in results.proposal[order]],
                  "p": [_round(x) for x in results.p[order]], "gs": [_round(x) for x in results.given_score[rows]],
                  "kind": [int(k) for k in results.kind[order]], "thumb": [int(t) for t in thumb]},
        "_decoded": items.decoded,
    }


def _round(x: float) -> Optional[float]:
    return None if not np.isfinite(x) else round(float(x), 4)


def _remove_stale(folder: Path, keep: set) -> None:
    """Remove the sheets of an older item list (only files named like ours)."""
    for entry in folder.iterdir():
        if entry.is_file() and _SHEET_NAME.match(entry.name) and entry.name not in keep:
            entry.unlink(missing_ok=True)


# =============================================================================== page
def _json_for_script(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>``, ``&`` and the line
    separators escaped, so no string can close the element."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_review(data: Dict[str, Any]) -> str:
    """The page: one HTML string (inline CSS and script; the thumbnails are the sheets beside it)."""
    public = {k: v for k, v in data.items() if not k.startswith("_")}
    title = f"synref review \u2014 {data.get('data') or 'results'}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{REVIEW_CSS}</style></head><body>"
            f'<script type="application/json" id="synref-data">{_json_for_script(public)}</script>'
            f"<script>{REVIEW_JS}</script></body></html>\n")


def write_review(out_dir: PathLike, *, thumb_px: int = DEFAULT_THUMB_PX, anchors_per_class: int = 4,
                 max_items: int = DEFAULT_MAX_ITEMS, workers: int = 2,
                 image_of: Optional[ImageOf] = None) -> Path:
    """Write ``OUT/review.html`` and its thumbnails ``OUT/review/`` for the results folder
    ``out_dir``; returns the page's path.

    Args:
        thumb_px: the tiles' side (8..256 px).
        anchors_per_class: anchors shown per class (0: none).
        max_items: the most items on the page (changed first, then flagged; most probable first).
        workers: decoding threads for the thumbnails.
        image_of: ``index -> (H, W, C) uint8 image or None`` instead of the images named in
            refined_labels.csv (the Python API; the page keys its thumbnails on it).
    Re-run safe: sheets already written for the same items are reused, the page is replaced
    atomically. InputError naming the file when the folder is missing or corrupt.
    """
    check_count(thumb_px, "thumb_px", minimum=8, maximum=256)
    check_count(anchors_per_class, "anchors_per_class", minimum=0, maximum=64)
    check_count(max_items, "max_items", minimum=1)
    check_count(workers, "workers", minimum=0, maximum=64)
    out = Path(out_dir)
    results = read_results(out)
    check_output_file(out / "review.html", "OUT")
    remove_stale_temp_files(out / "review")
    data = review_data(results, folder=out / "review", thumb_px=thumb_px, anchors_per_class=anchors_per_class,
                       max_items=max_items, workers=workers, image_of=image_of)
    path = out / "review.html"
    write_text(path, render_review(data))
    return path

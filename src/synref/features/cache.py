"""The on-disk feature cache: chunked, resumable, streamed, shared by several processes.

:func:`cached_features` stores ``extractor.extract(images)`` under
``cache_dir/<key>__<fingerprint>.npy`` (+ a ``.json`` sidecar) and loads it memory-mapped when
present; rows are computed in chunks so a killed run resumes, path-backed sets are streamed from
disk a batch at a time, and :func:`extract_features_distributed` lets several processes
(``accelerate launch``) fill one cache. :func:`encode_sets` is the L2-normalised features of
several named image sets (what LRA-diffusion and the fixed refinement spaces take).
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..arrays import l2_normalize
from ..data import LabeledImages, materialize
from ..data.stream import PathStream, probe_geometry
from ..errors import InputError
from ..io import atomic_path, write_json, write_npy
from ..progress import progress as progress_bar, progress_setting
from ..validation import as_image_array, check_optional_channels, check_optional_size
from .base import FeatureExtractor, ImagesLike, PathLike, check_batch_size, images_hash

__all__ = ["cache_path", "cached_features", "compute_features", "FeatureSet", "extract_features_distributed",
           "encode_sets"]


# ------------------------------------------------------------------------------- cache
def _safe_key(key: str) -> str:
    key = re.sub(r"[^A-Za-z0-9._-]+", "-", str(key)).strip("-.")
    if not key:
        raise InputError("dataset_key must contain letters or digits")
    return key[:120]


def _geometry_tag(size: Optional[Tuple[int, int]], channels: Optional[int]) -> str:
    """``""`` or ``-<H>x<W>`` / ``-c<C>``: the requested working size, part of the cache key."""
    tag = ""
    if size is not None:
        tag += f"-{int(size[0])}x{int(size[1])}"
    if channels is not None:
        tag += f"-c{int(channels)}"
    return tag


def cache_path(extractor: FeatureExtractor, images_or_dataset: Optional[ImagesLike] = None, *,
               cache_dir: PathLike, dataset_key: Optional[str] = None,
               size: Optional[Union[int, Tuple[int, int]]] = None,
               channels: Optional[int] = None) -> Path:
    """``cache_dir/<dataset_key or images-<hash16>><geometry>__<fingerprint>.npy``; the geometry
    tag (``-HxW``, ``-cC``) is there only when ``size`` / ``channels`` are given."""
    if dataset_key is None:
        if images_or_dataset is None:
            raise InputError("cache_path needs images or a dataset_key")
        key = f"images-{images_hash(images_or_dataset)[:16]}"
    else:
        key = _safe_key(dataset_key)
    key += _geometry_tag(check_optional_size(size), check_optional_channels(channels))
    return Path(cache_dir) / f"{key}__{extractor.fingerprint()}.npy"


def _load_cached(path: Path, n: int) -> Optional[np.ndarray]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:
        return None
    if arr.ndim != 2 or arr.dtype != np.float32 or arr.shape[0] != n:
        return None
    return arr


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _partial_meta_ok(meta_path: Path, expect: Dict[str, Any]) -> bool:
    meta = _read_json(meta_path)
    return meta is not None and all(meta.get(k) == v for k, v in expect.items())


# ------------------------------------------------------------------------------- cache
class FeatureSet(NamedTuple):
    """What :func:`compute_features` returns: ``features`` ``(N, D)`` float32 (memory-mapped,
    read-only) and ``skipped``, the unreadable files (``{"index", "file", "reason"}``) whose
    rows are all zeros (with ``skip_bad``)."""

    features: np.ndarray
    skipped: List[Dict[str, Any]]


def cached_features(extractor: FeatureExtractor, images_or_dataset: ImagesLike, *,
                    cache_dir: PathLike, dataset_key: Optional[str] = None,
                    batch_size: int = 256, chunk_size: int = 4096,
                    size: Optional[Union[int, Tuple[int, int]]] = None,
                    channels: Optional[int] = None, num_workers: int = 0,
                    skip_bad: bool = False, path: Optional[PathLike] = None) -> np.ndarray:
    """The features of :func:`compute_features` (without the list of skipped files)."""
    return compute_features(extractor, images_or_dataset, cache_dir=cache_dir, dataset_key=dataset_key,
                            batch_size=batch_size, chunk_size=chunk_size, size=size, channels=channels,
                            num_workers=num_workers, skip_bad=skip_bad, path=path).features


def _chunk_name(k: int) -> str:
    return f"chunk-{k:06d}"


def compute_features(
        extractor: FeatureExtractor, dataset: ImagesLike, *,
        cache_dir: Optional[PathLike] = None, dataset_key: Optional[str] = None,
        process_index: int = 0, num_processes: int = 1,
        barrier: Optional[Callable[[], Any]] = None, batch_size: int = 256,
        chunk_size: int = 4096,
        size: Optional[Union[int, Tuple[int, int]]] = None, channels: Optional[int] = None,
        num_workers: int = 0, skip_bad: bool = False,
        path: Optional[PathLike] = None) -> FeatureSet:
    """``extractor.extract(dataset)`` as a :class:`FeatureSet` (features ``(N, D)`` float32,
    memory-mapped, read-only; the files left out), stored on disk and loaded when present.

    Layout: ``cache_dir/<key>__<fingerprint>.npy`` where key is ``dataset_key`` (sanitised) or
    ``images-<sha256[:16] of the images>`` (+ ``-HxW`` / ``-cC`` when ``size`` / ``channels``
    are given), plus ``<same>.json`` describing the extractor and the images. Rows are computed
    in chunks of ``chunk_size`` into ``<same>.npy.partial/`` (``chunk-000000.npy``..., each
    written atomically), so a killed run, re-run, only computes the missing chunks; the final
    file is assembled in a temporary file and renamed (never half-written), then the partial
    folder is removed. A cached file whose row count does not match the images (a reused
    ``dataset_key``) is recomputed. ``path=`` puts the result at that exact file instead (the
    sidecar beside it, ``.json``); it is reused only when its sidecar records the same
    extractor fingerprint, images and working size.

    Path-backed :class:`LabeledImages` (image folder, CSV manifest) are **streamed**: decoded
    ``batch_size`` files at a time at the working size ``size=(H, W)`` / ``channels`` (default:
    what :func:`~synref.data.materialize` would choose, from the file headers), at most
    ``batch_size * 3`` decoded images alive; ``num_workers > 0`` decodes in that many threads,
    ahead of the model. The features equal those of the materialized array. An array (or
    array-backed set) is resized first when ``size`` / ``channels`` ask for it.

    Unreadable files: InputError naming the file; with ``skip_bad=True`` the file's row is all
    zeros, and the file is listed in the result's ``skipped`` and under ``"skipped"`` in the
    sidecar (also on a cache hit).

    Several processes (``accelerate launch``): ``num_processes`` cooperating processes (call it
    in every one, with the same arguments, ``process_index`` and a ``barrier``) fill one cache.
    The cache's chunk files are the unit of work: chunk ``k`` (rows ``k*chunk_size`` ...) is
    computed by process ``k % num_processes``, which writes ``chunk-<k>.npy`` atomically (chunks
    are disjoint, so processes never write the same file) and appends ``{"chunk", "rows",
    "rank", "seconds"}`` to its own log in the partial folder. Chunks already present (a killed
    run) are skipped, whatever the process count was. After ``barrier()`` process 0 assembles
    the final ``.npy`` (atomically) and the sidecar (with the per-chunk log as ``"chunks"``
    and the skipped files); after a second ``barrier()`` every process returns the
    memory-mapped features. An error in one process (an unreadable file) is reported in every
    process after the barrier instead of leaving the others waiting. ``barrier`` may be None
    only with one process.
    """
    batch_size = check_batch_size(batch_size)
    if int(chunk_size) < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = int(chunk_size)
    num_processes, rank = int(num_processes), int(process_index)
    if num_processes < 1 or not 0 <= rank < num_processes:
        raise InputError(f"process_index {process_index} / num_processes {num_processes} invalid")
    if num_processes > 1 and barrier is None:
        raise InputError("extract_features_distributed: num_processes > 1 needs a barrier")
    if cache_dir is None and path is None:
        raise InputError("extract_features_distributed needs cache_dir= or path=")
    hw = check_optional_size(size)
    want_c = check_optional_channels(channels)
    sync = barrier if barrier is not None else (lambda: None)

    n = len(dataset)
    if path is not None:
        final = Path(path)
        if final.suffix != ".npy":
            final = final.with_name(final.name + ".npy")
    else:
        final = cache_path(extractor, dataset, cache_dir=cache_dir, dataset_key=dataset_key,
                           size=hw, channels=want_c)
    sidecar = final.with_suffix(".json")
    expect = {"fingerprint": extractor.fingerprint(), "n": n,
              "images": _safe_key(dataset_key) if dataset_key is not None
              else images_hash(dataset),
              "size": None if hw is None else list(hw), "channels": want_c}

    def hit_ok() -> Optional[np.ndarray]:
        if not final.exists():
            return None
        arr = _load_cached(final, n)
        if arr is None or path is None:
            return arr
        side = _read_json(sidecar)
        return arr if side is not None and side.get("cache") == expect else None

    hit = hit_ok()
    if hit is not None:
        side = _read_json(sidecar) if sidecar.exists() else None
        if side is None and rank == 0:
            _write_sidecar(sidecar, extractor, dataset, dataset_key, hit.shape, None,
                           cache=expect)
        return FeatureSet(hit, list((side or {}).get("skipped") or []))

    stream, pixels, bad, geometry = _pixel_source(dataset, hw, want_c, skip_bad=skip_bad, num_workers=num_workers)
    partial = final.parent / (final.name + ".partial")
    meta = {"n": n, "chunk_size": chunk_size, "fingerprint": extractor.fingerprint(),
            "dataset_key": dataset_key}
    if path is not None:
        meta["cache"] = expect
    if rank == 0:
        _prepare_partial(partial, meta)
    sync()                                   # the partial folder is ready for everyone

    starts = list(range(0, n, chunk_size)) or [0]
    rows_of = [min(s + chunk_size, n) - s for s in starts]
    chunk_files = [partial / f"{_chunk_name(k)}.npy" for k in range(len(starts))]
    mine = [k for k in range(len(starts)) if k % num_processes == rank]
    todo = [k for k in mine if not _chunk_ok(chunk_files[k], rows_of[k])]
    failure: Optional[BaseException] = None
    t_all = time.perf_counter()
    if todo:
        bar = progress_bar(total=sum(rows_of[k] for k in todo),
                           desc=f"{extractor.name} features"
                                + (f" [{rank}/{num_processes}]" if num_processes > 1 else ""),
                           unit="img")
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(progress_setting(False))   # the chunk bar above is the only one
                if stream is not None:
                    stack.enter_context(stream)
                for k in todo:
                    t0 = time.perf_counter()
                    feats, chunk_bad = _chunk_features(extractor, starts[k], rows_of[k], pixels, stream, bad,
                                                       batch_size, bar)
                    record = {"chunk": k, "start": starts[k], "rows": rows_of[k], "rank": rank,
                              "seconds": round(time.perf_counter() - t0, 4),
                              "skipped": [{"index": i, "file": dataset.paths[i], "reason": r}
                                          for i, r in sorted(chunk_bad.items())]}
                    write_json(partial / f"{_chunk_name(k)}.json", record)
                    write_npy(chunk_files[k], feats)
                    with open(partial / f"log.{rank}.jsonl", "a", encoding="utf-8") as log:
                        log.write(json.dumps(record) + "\n")
        except BaseException as exc:        # tell the others after the barrier; raise below
            failure = exc
            if num_processes > 1:
                _report_failure(partial, rank, exc)
        finally:
            bar.close()
    seconds = time.perf_counter() - t_all
    if failure is not None and num_processes == 1:
        raise failure
    sync()                                   # every chunk is written (or an error reported)
    if failure is not None:
        raise failure
    _raise_reported_failure(partial)
    if rank == 0:
        _finish(final, partial, chunk_files, starts, rows_of, n)
        dim = int(np.load(final, mmap_mode="r").shape[1])
        _write_sidecar(sidecar, extractor, dataset, dataset_key, (n, dim),
                       seconds if todo else None, cache=expect,
                       extra={**geometry, "num_processes": num_processes, "chunk_size": chunk_size,
                              **_chunk_records(partial, len(starts))})
        shutil.rmtree(partial, ignore_errors=True)
    sync()                                   # the final file is in place
    out = np.load(final, mmap_mode="r", allow_pickle=False)
    side = _read_json(sidecar) or {}
    return FeatureSet(out, list(side.get("skipped") or []))


def extract_features_distributed(extractor: FeatureExtractor, dataset: ImagesLike, **options: Any) -> np.ndarray:
    """The features of :func:`compute_features` (memory-mapped, read-only) computed by several
    processes; the skipped files are listed in the sidecar (``<path>.json``)."""
    return compute_features(extractor, dataset, **options).features


def _pixel_source(dataset: ImagesLike, hw: Optional[Tuple[int, int]], want_c: Optional[int], *, skip_bad: bool,
                  num_workers: int
                  ) -> Tuple[Optional[PathStream], Optional[np.ndarray], Dict[int, str], Dict[str, Any]]:
    """``(stream, pixels, unreadable files, geometry)``: a path-backed set is streamed (decoded a
    batch at a time at the working size probed from the headers); an array is used as is, or
    resized once when ``hw`` / ``want_c`` ask for it."""
    if isinstance(dataset, LabeledImages) and dataset.images is None:
        if len(dataset) == 0:
            raise InputError("cannot extract features of an empty image set")
        geo_hw, geo_c, bad = probe_geometry(dataset.paths or [], hw, want_c, skip_bad=skip_bad,
                                            num_workers=num_workers)
        stream = PathStream(dataset.paths or [], geo_hw, geo_c, skip_bad=skip_bad, num_workers=num_workers)
        return stream, None, bad, {"image_size": list(geo_hw), "channels": geo_c}
    arr = dataset.images if isinstance(dataset, LabeledImages) else dataset
    if hw is not None or want_c is not None:
        lab = dataset if isinstance(dataset, LabeledImages) else LabeledImages(
            as_image_array(arr), np.zeros(len(arr), np.int64), ["x"])
        arr = materialize(lab, size=hw, channels=want_c).images
    pixels = as_image_array(arr)
    return None, pixels, {}, {"image_size": list(pixels.shape[1:3]), "channels": int(pixels.shape[-1])}


def _prepare_partial(partial: Path, meta: Dict[str, Any]) -> None:
    """The partial folder of a computation with ``meta`` (a stale one of other options is removed;
    old error reports are cleared)."""
    if partial.exists() and not _partial_meta_ok(partial / "meta.json", meta):
        shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=True)
    if not (partial / "meta.json").exists():
        write_json(partial / "meta.json", meta)
    for stale in partial.glob("error.*.txt"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _chunk_ok(path: Path, rows: int) -> bool:
    if not path.exists():
        return False
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:
        return False
    return a.ndim == 2 and a.shape[0] == rows and a.dtype == np.float32


def _chunk_features(extractor: FeatureExtractor, start: int, rows: int, pixels: Optional[np.ndarray],
                    stream: Optional[PathStream], bad: Dict[int, str], batch_size: int,
                    bar: Any) -> Tuple[np.ndarray, Dict[int, str]]:
    """Features (rows, D) float32 of rows ``start:start + rows`` and their unreadable files
    (zero rows)."""
    chunk_bad: Dict[int, str] = {}
    if stream is None:
        assert pixels is not None
        feats = extractor.extract(pixels[start:start + rows], batch_size=batch_size)
        bar.update(rows)
    else:
        parts: List[np.ndarray] = []
        for b0, imgs, b_bad in stream.batches(start, start + rows, batch_size):
            f = extractor.extract(imgs, batch_size=batch_size)
            for i in b_bad:
                f[i - b0] = 0.0
            chunk_bad.update(b_bad)
            parts.append(f)
            bar.update(len(imgs))
        for i in bad:                    # unreadable headers (probing)
            if start <= i < start + rows:
                chunk_bad[i] = bad[i]
        feats = np.concatenate(parts)
        for i in chunk_bad:
            feats[i - start] = 0.0
    return np.ascontiguousarray(feats, dtype=np.float32), chunk_bad


def _report_failure(partial: Path, rank: int, exc: BaseException) -> None:
    """Leave ``error.<rank>.txt`` for the other processes (read after the barrier)."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    kind = "input" if isinstance(exc, InputError) else "other"
    with contextlib.suppress(OSError):
        (partial / f"error.{rank}.txt").write_text(f"{kind}\n{msg}", encoding="utf-8")


def _raise_reported_failure(partial: Path) -> None:
    """Raise the first error another process reported (an InputError stays one)."""
    errors = sorted(partial.glob("error.*.txt"))
    if errors:
        kind, _, msg = errors[0].read_text(encoding="utf-8").partition("\n")
        who = errors[0].name.split(".")[1]
        if kind == "input":
            raise InputError(msg)
        raise RuntimeError(f"feature extraction failed in process {who}: {msg}")


def _finish(final: Path, partial: Path, chunk_files: Sequence[Path], starts: Sequence[int],
            rows_of: Sequence[int], n: int) -> None:
    """Process 0, after every process is done: check the chunks and assemble ``final``."""
    missing = [k for k in range(len(starts)) if not _chunk_ok(chunk_files[k], rows_of[k])]
    if missing:
        raise RuntimeError(f"feature chunks {missing[:5]} are missing after all processes "
                           f"finished ({partial})")
    _assemble(final, chunk_files, starts, rows_of, n)


def _chunk_records(partial: Path, num_chunks: int) -> Dict[str, Any]:
    """The sidecar's ``chunks`` (who computed what, how long) and ``skipped`` (unreadable files)."""
    log_rows: List[Dict[str, Any]] = []
    for lf in sorted(partial.glob("log.*.jsonl")):
        for line in lf.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                log_rows.append(json.loads(line))
    skipped: List[Dict[str, Any]] = []
    for k in range(num_chunks):
        rec = _read_json(partial / f"{_chunk_name(k)}.json") or {}
        skipped.extend(rec.get("skipped") or [])
    chunks = sorted(({key: r.get(key) for key in ("chunk", "rows", "rank", "seconds")} for r in log_rows),
                    key=lambda r: (r["chunk"], r["rank"]))
    return {"chunks": chunks, "skipped": skipped}


def _assemble(final: Path, chunk_files: Sequence[Path], starts: Sequence[int],
              rows_of: Sequence[int], n: int) -> None:
    """Concatenate the chunk files into ``final`` through a temporary file + rename."""
    first = np.load(chunk_files[0], mmap_mode="r")
    dim = int(first.shape[1])
    with atomic_path(final) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for k, f in enumerate(chunk_files):
            a = np.load(f, mmap_mode="r")
            if a.shape[1] != dim:
                raise RuntimeError(f"cache chunk {f} has {a.shape[1]} columns, expected {dim}")
            out[starts[k]:starts[k] + rows_of[k]] = a
        out.flush()
        del out


def _write_sidecar(path: Path, extractor: FeatureExtractor, images: ImagesLike,
                   dataset_key: Optional[str], shape: Sequence[int],
                   seconds: Optional[float], *, cache: Optional[Dict[str, Any]] = None,
                   extra: Optional[Dict[str, Any]] = None) -> None:
    if isinstance(images, LabeledImages):
        img_desc: Dict[str, Any] = {"n": len(images), "path_backed": images.is_path_backed}
        if images.images is not None:
            img_desc["shape"] = list(images.images.shape)
    else:
        img_desc = {"n": len(images), "shape": list(np.shape(images))}
    img_desc["sha256"] = images_hash(images) if dataset_key is None else None
    try:
        desc = extractor.describe()
    except Exception:   # pragma: no cover - description is informative only
        desc = {"name": extractor.name, "fingerprint": extractor.fingerprint()}
    obj = {"features": path.with_suffix(".npy").name, "shape": list(shape),
           "dtype": "float32", "dataset_key": dataset_key, "images": img_desc,
           "extractor": desc, "seconds": seconds,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if cache is not None:
        obj["cache"] = cache
    obj.update(extra or {})
    write_json(path, obj)



def encode_sets(extractor: FeatureExtractor, image_sets: Mapping[str, ImagesLike], *, cache_dir: PathLike,
                key_prefix: str, size: Optional[int] = None, num_workers: int = 0) -> Dict[str, np.ndarray]:
    """L2-normalised float32 features ``(N_s, D)`` of every ``image_sets[s]`` (uint8
    ``(N_s, H, W, C)``, or a path-backed :class:`LabeledImages`: streamed from its files, decoded at
    ``size x size`` RGB when ``size`` is given), cached in ``cache_dir`` under ``<key_prefix>-<s>``
    (each set is encoded once, in resumable chunks; a re-run loads it), as the LRA-diffusion
    reference normalises its SimCLR / CLIP features."""
    out: Dict[str, np.ndarray] = {}
    for name, images in image_sets.items():
        if len(images) == 0:
            raise InputError(f"encoder {extractor.name}: image set {name!r} is empty")
        streamed = isinstance(images, LabeledImages) and images.is_path_backed and size is not None
        feats = np.asarray(cached_features(extractor, images, cache_dir=cache_dir, dataset_key=f"{key_prefix}-{name}",
                                           size=(int(size), int(size)) if streamed else None,
                                           channels=3 if streamed else None, num_workers=num_workers),
                           dtype=np.float32)
        out[name] = l2_normalize(feats)
    return out

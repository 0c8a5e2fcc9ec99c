"""Atomic file output (nothing half-written is ever left under the final name), checked input
of torch / numpy files, and the output-folder check every command makes before any work."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, List, Union

import numpy as np

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, *, fsync_dir: bool = False, fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for the caller to write; on success it is fsynced (unless
    ``fsync=False``: a cache that may be lost in a power cut) and renamed onto ``path`` (and, with
    ``fsync_dir``, the folder is fsynced so the rename survives a power cut); on any error it is
    removed. For writers that need a path, not a handle."""
    path = Path(path)
    if path.is_dir():
        from .errors import InputError

        raise InputError(f"cannot write {path}: it is a folder; remove it or choose another output path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS:
            raise _write_error(path, exc) from None
        raise
    if fsync_dir:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", *, fsync_dir: bool = False, **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success."""
    with atomic_path(path, fsync_dir=fsync_dir) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle


#: errors of the output location (not of synref): full disk, read-only, no permission, a file in the way.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                  errno.EISDIR, errno.EEXIST}


def _write_error(path: Path, exc: OSError) -> Exception:
    """A one-line InputError for an output that cannot be written (other OSErrors are kept)."""
    from .errors import InputError

    if exc.errno not in _OUTPUT_ERRNOS:
        return exc
    reason = exc.strerror or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
    return InputError(f"cannot write {path}: {reason}{where}; choose a writable output location")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=json_default)
        handle.write("\n")


def write_npy(path: PathLike, array: np.ndarray) -> None:
    """Save ``array`` as .npy, atomically."""
    with atomic_open(path, "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)


def write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def read_torch_file(path: PathLike, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (tensors, dicts, lists, numbers only:
    no pickled code runs). A missing or unreadable file raises a one-line InputError naming
    ``what`` (e.g. "classifier checkpoint") and the path."""
    import torch

    from .errors import InputError

    path = Path(path)
    check_input_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        # torch's own message advises weights_only=False, i.e. running the file's code: never pass it on
        if "GLOBAL" in text or "Unsupported global" in text:
            raise InputError(f"cannot read {what} {path}: it holds Python objects other than tensors, "
                             f"numbers and strings, which synref refuses to load (they could run code); "
                             f"save plain state dicts, e.g. with synref.models.save_classifier") from None
        if "weights_only" in text or "pickle" in text.lower():
            raise InputError(f"cannot read {what} {path}: not a torch tensor file (corrupt, truncated or "
                             f"another format); save it with torch.save / synref.models.save_classifier") from None
        msg = " ".join(text.split())[:200]
        raise InputError(f"cannot read {what} {path}: {msg}") from None


def read_npy(path: PathLike, what: str) -> np.ndarray:
    """``np.load(path)`` without pickles; a missing or unreadable file is a one-line InputError
    naming ``what`` (e.g. "--probs") and the path."""
    from .errors import InputError, one_line

    path = Path(path)
    check_input_file(path, f"{what} file")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a bad file
        raise InputError(f"cannot read {what} file {path}: {npy_problem(exc)}") from None


def read_npy_matrix(path: PathLike, what: str) -> np.ndarray:
    """A 2-D numeric ``.npy`` array (N, D), memory-mapped read-only (nothing is read until used;
    no pickles); anything else is a one-line InputError naming ``what`` and the path."""
    from .errors import InputError

    path = Path(path)
    check_input_file(path, f"{what} file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a bad file
        raise InputError(f"cannot read {what} file {path}: {npy_problem(exc)}") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{what} {path}: expected a 2-D array (rows, dimensions), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)) \
            or array.dtype == np.bool_:
        raise InputError(f"{what} {path}: expected numbers, got dtype {array.dtype}")
    return array


def npy_problem(exc: BaseException) -> str:
    """Why ``np.load(..., allow_pickle=False)`` failed, in words that never advise loading the
    file unsafely (numpy's own message suggests ``allow_pickle=True``)."""
    from .errors import one_line

    if "pickle" in str(exc).lower():
        return ("not a numpy .npy array file (or one holding Python objects, which synref does not load); "
                "save a numeric array with numpy.save")
    return one_line(exc)


def absolute_path(path: PathLike) -> str:
    """``path`` with ``~`` expanded, made absolute against the current folder (links kept): what a
    saved config stores, so that it names the same file when re-run from another folder."""
    return os.path.abspath(os.path.expanduser(str(path)))


def check_input_file(path: PathLike, what: str) -> Path:
    """``path`` as a Path when it is a regular file (symlinks followed); a missing file, a folder,
    or a device / pipe / socket (which would block or never end) is a one-line InputError."""
    from .errors import InputError

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise InputError(f"{what} not found: {path}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{what} {path} is a folder; give a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {path} is not a regular file (a device, pipe or socket); give a file")
    return path


def check_output_dir(out: PathLike, option: str = "--out") -> None:
    """Fail before any work if ``out`` cannot become a writable folder (nothing is created)."""
    from .errors import InputError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out} exists and is not a folder; choose a folder")
    probe = Path(os.path.abspath(out))
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{option} {out}: {probe} is not a writable folder; choose a writable location")


def check_output_file(path: PathLike, option: str = "--out") -> None:
    """Fail before any work if ``path`` cannot become a file: it is a folder, or its folder
    cannot be created or written (nothing is created)."""
    from .errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name (e.g. {path / 'labels.npy'})")
    if path.exists() and not path.is_file():
        raise InputError(f"{option} {path} is not a regular file; give a file name")
    check_output_dir(path.parent if str(path.parent) else Path("."), option=option)


#: the lock file a run holds in its results folder (one writer per folder).
OUTPUT_LOCK = ".synref-run.lock"


@contextlib.contextmanager
def output_lock(out: PathLike, option: str = "--out") -> Iterator[Path]:
    """Hold ``out/.synref-run.lock`` while a run writes into the folder ``out``: a second run into
    the same folder is refused at once (one line, InputError) instead of both writing and the last
    finisher silently winning. Creates ``out``; when this run created it and leaves nothing but the
    lock in it (a run refused before writing), both are removed again."""
    from filelock import FileLock, Timeout

    from .errors import InputError

    out = Path(out)
    existed = out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(out, exc) from None
    lock = FileLock(str(out / OUTPUT_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(f"{option} {out} is being written by another synref run (it holds {OUTPUT_LOCK}); wait "
                         f"for it to finish or choose another {option}") from None
    try:
        yield out
    finally:
        lock.release()
        if not existed and [p.name for p in out.iterdir()] == [OUTPUT_LOCK]:
            with contextlib.suppress(OSError):
                (out / OUTPUT_LOCK).unlink()
                out.rmdir()


def check_not_inside(out: PathLike, data: PathLike, option: str = "--out", data_option: str = "--data") -> None:
    """InputError when the folder ``out`` is ``data`` or lies inside it (results would be written
    into the dataset and read back as part of it)."""
    from .errors import InputError

    data_path = Path(os.path.expanduser(str(data)))
    if not data_path.is_dir():
        return
    data_real = Path(os.path.realpath(data_path))
    out_real = Path(os.path.realpath(os.path.expanduser(str(out))))
    if out_real == data_real or data_real in out_real.parents:
        raise InputError(f"{option} {out} is inside {data_option} {data}: the results would be mixed into "
                         f"the dataset; choose an {option} folder outside {data}")


#: names :func:`atomic_path` gives its temporary files: ``.<name>.<8 random chars>.tmp``.
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temp_files(folder: PathLike, *, recursive: bool = True) -> List[Path]:
    """Delete the temporary files that writes killed mid-way left in ``folder`` (the
    ``.<name>.<random>.tmp`` files of :func:`atomic_path`); returns them. Call it only while no
    other process writes into ``folder``."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed: List[Path] = []
    walker = os.walk(root) if recursive else [(str(root), [], [e.name for e in os.scandir(root)])]
    for dirpath, _, filenames in walker:
        for name in filenames:
            if _TEMP_NAME.match(name):
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    if path.is_file() and not path.is_symlink():
                        path.unlink()
                        removed.append(path)
    return removed


def read_json_object(path: PathLike, what: str) -> dict:
    """The JSON object in ``path``; an unreadable file, bad JSON or another JSON value is a
    one-line InputError naming ``what`` and the path."""
    from .errors import InputError, one_line

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read {what} {path}: {one_line(exc)}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{what} {path} must hold a JSON object, got {type(obj).__name__}")
    return obj


#: first characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection"), and
#: the quote that marks a cell as neutralised.
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: Any) -> str:
    """A text cell for a CSV synref writes, neutralised against spreadsheet formula injection
    (OWASP): a cell starting with ``= + - @``, a tab or a carriage return -- or with the quote
    itself, so that the rule can be undone -- gets a leading ``'``. :func:`read_csv_text` undoes it."""
    text = str(value)
    return "'" + text if text.startswith(CSV_FORMULA_STARTS + ("'",)) else text


def read_csv_text(text: str) -> str:
    """The value :func:`csv_text` neutralised (one leading ``'`` removed)."""
    return text[1:] if text.startswith("'") else text

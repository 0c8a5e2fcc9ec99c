"""Generate an anchor set on disk: resumable, crash-safe, split across processes.

>>> from synref.anchors import create_generator
>>> gen = create_generator("glyph", size=32)
>>> summary = generate_anchor_set(gen, parse_class_list("digits"), 50, "anchors/digits")  # doctest: +SKIP
>>> from synref.anchors.store import load_anchor_set
>>> anchors = load_anchor_set("anchors/digits")                                          # doctest: +SKIP

Work items are all ``(class_index, k)`` pairs, class-major; item ``i`` belongs to process
``i % num_processes``, so processes never generate the same image. Each process writes its own
images and its own manifest shard (``manifest.<rank>.jsonl``); loading merges the shards.
Re-running the same call finishes only what is missing (see :mod:`synref.anchors.store`).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..errors import InputError, one_line
from ..io import remove_stale_temp_files
from ..progress import progress as progress_bar
from ..validation import check_count, check_memory, check_seed, check_size
from .base import AnchorGenerator, as_hwc, validate_class_names
from .store import (ANCHORSET_FILE, IMAGES_DIR, LOCK_FILE, AnchorSet, ManifestWriter, manifest_files,
                    prepare_anchor_set)

PathLike = Union[str, os.PathLike]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

#: CIFAR-100 fine label names in the official order (``meta["fine_label_names"]``).
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]

DIGITS_CLASSES = [str(i) for i in range(10)]

BUILTIN_CLASS_LISTS: Dict[str, List[str]] = {
    "cifar10": CIFAR10_CLASSES,
    "cifar100": CIFAR100_CLASSES,
    "digits": DIGITS_CLASSES,
}


# ---------------------------------------------------------------------------- class lists
def _check_names(names: List[str], where: List[str], source: str) -> List[str]:
    """InputError naming empty or duplicate names; ``where[i]`` says where name i came from."""
    if not names:
        raise InputError(f"{source}: no class names")
    seen: Dict[str, str] = {}
    dups: List[str] = []
    for name, at in zip(names, where):
        if not name:
            raise InputError(f"{source}: empty class name at {at}")
        if name in seen:
            dups.append(f"{name!r} ({seen[name]} and {at})")
        else:
            seen[name] = at
    if dups:
        raise InputError(f"{source}: duplicate class names: {', '.join(dups[:5])}"
                         + (f", ... ({len(dups)} in all)" if len(dups) > 5 else ""))
    return names


def parse_class_list(value: Union[str, os.PathLike, Sequence[str]]) -> List[str]:
    """Class names from a file, a comma-separated list, or a built-in list name.

    * an existing file: one class per line; blank lines and ``#`` comments (whole lines, or
      after `` #``) are ignored, surrounding spaces stripped;
    * ``"cifar10"``, ``"cifar100"`` (fine labels, official order) or ``"digits"`` ("0".."9");
    * otherwise a comma-separated list (``"cat,dog,bird"``; a single name is a one-class list).

    A list/tuple of names is checked and returned. Empty or duplicate names raise InputError
    naming them (and their line or position).
    """
    if not isinstance(value, (str, os.PathLike)):
        names = [str(v).strip() for v in value]
        return _check_names(names, [f"position {i + 1}" for i in range(len(names))], "classes")
    text = os.fspath(value)
    if not text.strip():
        raise InputError(f"--classes is empty; give a file, a comma-separated list or one of "
                         f"{', '.join(BUILTIN_CLASS_LISTS)}")
    path = Path(os.path.expanduser(text))
    if text.strip() and path.is_file():
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read class list {path}: {type(exc).__name__}: {exc}") from None
        names, where = [], []
        for i, line in enumerate(lines, 1):
            if " #" in line or "\t#" in line:
                line = line[:min(p for p in (line.find(" #"), line.find("\t#")) if p >= 0)]
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            names.append(line)
            where.append(f"line {i}")
        return _check_names(names, where, f"class list {path}")
    if path.is_dir():
        raise InputError(f"--classes {text!r} is a folder; give a file, a comma-separated list "
                         f"or one of {', '.join(BUILTIN_CLASS_LISTS)}")
    key = text.strip().lower()
    if key in BUILTIN_CLASS_LISTS:
        return list(BUILTIN_CLASS_LISTS[key])
    if "," not in text and (text.endswith((".txt", ".csv", ".lst")) or "/" in text
                            or os.sep in text):
        raise InputError(f"class list file not found: {text}")
    names = [part.strip() for part in text.split(",")]
    return _check_names(names, [f"position {i + 1}" for i in range(len(names))],
                        f"class list {text!r}")


# ---------------------------------------------------------------------------- generation
def assigned_indices(total: int, process_index: int, num_processes: int) -> range:
    """The work-item indices of one process: ``i`` with ``i % num_processes == process_index``."""
    return range(process_index, total, num_processes)


def _check_available(generator: AnchorGenerator, names: Sequence[str], per_class: int) -> None:
    """Generators with a finite supply (``available(class_name) -> int``, e.g. ``folder``)."""
    available = getattr(generator, "available", None)
    if not callable(available):
        return
    short = [(n, int(available(n))) for n in names]
    short = [(n, a) for n, a in short if a < per_class]
    if short:
        listed = ", ".join(f"{n!r} has {a}" for n, a in short[:5])
        more = f", ... ({len(short)} classes)" if len(short) > 5 else ""
        raise InputError(f"{generator.name}: fewer than per_class={per_class} images: "
                         f"{listed}{more}")


def generate_anchor_set(generator: AnchorGenerator, class_names: Sequence[str], per_class: int,
                        out_dir: PathLike, *, seed: int = 0, batch_size: Optional[int] = None,
                        process_index: int = 0, num_processes: int = 1,
                        barrier: Optional[Callable[[], Any]] = None) -> Dict[str, Any]:
    """Write ``per_class`` anchors per class to ``out_dir`` (or finish a run that stopped).

    Args:
        generator: any :class:`~synref.anchors.base.AnchorGenerator`; images are made with
            ``generator.generate_batch(items, seed)`` and described with ``generator.describe``.
        class_names: the C class names (label = index).
        per_class: images per class. Re-running with a larger value adds only the new ``k``.
        out_dir: the anchor-set folder (layout in :mod:`synref.anchors.store`).
        seed: image ``k`` of class ``c`` depends only on ``(seed, c, k)`` and the options.
        batch_size: items per ``generate_batch`` call (default: the generator's ``batch_size``
            attribute, else 16). A crash loses at most one batch of work.
        process_index, num_processes: this process's share (item ``i`` goes to process
            ``i % num_processes``); rank 0 writes ``anchorset.json``.
        barrier: called after ``anchorset.json`` is written and at the end (e.g.
            ``accelerate.PartialState().wait_for_everyone``); with it, process 0 reports
            whether the whole set is complete.

    Returns:
        A summary dict: out, num_classes, per_class, total, process_index, num_processes,
        assigned, already_present, adopted, generated, seconds, images_per_second, and
        present/complete (whole set; None when unknown: several processes and no barrier).

    Raises:
        InputError: bad names/counts/seed, an output folder holding another set (other
            classes, generator, options or seed, or fewer images per class) or foreign files.
            Nothing is written when the checks fail.
    """
    names = validate_class_names(class_names)
    per_class = check_count(per_class, "per_class")
    seed = check_seed(seed)
    num_processes = check_count(num_processes, "num_processes")
    process_index = check_count(process_index, "process_index", minimum=0)
    if process_index >= num_processes:
        raise InputError(f"process_index {process_index} must be < num_processes {num_processes}")
    if batch_size is None:
        batch_size = getattr(generator, "batch_size", None) or 16
    batch_size = check_count(batch_size, "batch_size")
    root = Path(os.path.expanduser(str(out_dir)))
    if root.exists() and not root.is_dir():
        raise InputError(f"output {root} exists and is not a folder; choose a folder")

    generator.prepare(names)
    _check_available(generator, names, per_class)
    check_generate_memory(generator, len(names), per_class, batch_size)
    existed, had_lock = root.exists(), (root / LOCK_FILE).exists()
    lock = _lock_anchor_set(root) if process_index == 0 else None
    new_set = not (root / ANCHORSET_FILE).is_file()
    try:
        if num_processes == 1:
            remove_stale_temp_files(root, recursive=False)  # e.g. a killed write of anchorset.json
        return _generate(generator, names, per_class, root, seed, batch_size, process_index, num_processes,
                         barrier)
    except BaseException:
        if new_set and process_index == 0 and num_processes == 1:
            _remove_unfinished_set(root, existed, had_lock)
        raise
    finally:
        if lock is not None:
            lock.release()


#: memory a work item and its manifest row take while a set is written (a generous estimate).
_BYTES_PER_ITEM = 1024
#: bytes per pixel value of the images a batch renders (canvas, conversions, PNG encoding).
_BYTES_PER_VALUE = 4


def check_generate_memory(generator: AnchorGenerator, num_classes: int, per_class: int,
                          batch_size: int) -> None:
    """InputError before anything is written when the work list and one batch of images at the
    generator's ``size`` would need more memory than the machine has."""
    need = float(num_classes) * per_class * _BYTES_PER_ITEM
    what = f"{num_classes} classes x {per_class} anchors"
    size = getattr(generator, "size", None)
    if size is not None:
        h, w = check_size(size, "size")
        channels = int(getattr(generator, "channels", 3) or 3)
        need += float(batch_size) * h * w * channels * _BYTES_PER_VALUE
        what += f" of {h}x{w} px in batches of {batch_size}"
    check_memory(need, what, "ask for fewer images per class (--per-class) or smaller ones (--size, --batch-size)")


def _lock_anchor_set(root: Path) -> Any:
    """Hold the set's lock file (waiting, with a note, while another run writes the set): one
    writer at a time, so a run never ends with a set that another run changed under it."""
    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"synref: waiting for another run writing the anchor set {root} to finish", file=sys.stderr,
              flush=True)
        lock.acquire()
    return lock


def _remove_unfinished_set(root: Path, existed: bool, had_lock: bool) -> None:
    """Undo a new set that failed before its first image: its anchorset.json, empty manifests
    and folders, the lock file and ``root`` when this run created them, so a corrected re-run
    starts fresh."""
    images = root / IMAGES_DIR
    if images.is_dir() and any(files for _, _, files in os.walk(images)):
        return  # images were written: the set is resumable as it is
    for path in [root / ANCHORSET_FILE] + manifest_files(root):
        if path.name == ANCHORSET_FILE or path.stat().st_size == 0:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    if images.is_dir():
        for dirpath, _, _ in sorted(os.walk(images), key=lambda entry: -len(entry[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
    if not had_lock:
        with contextlib.suppress(FileNotFoundError):
            (root / LOCK_FILE).unlink()
    if not existed:
        with contextlib.suppress(OSError):
            root.rmdir()


def _generate(generator: AnchorGenerator, names: List[str], per_class: int, root: Path, seed: int,
              batch_size: int, process_index: int, num_processes: int,
              barrier: Optional[Callable[[], Any]]) -> Dict[str, Any]:
    """The body of :func:`generate_anchor_set` (checked arguments, the lock held by rank 0)."""
    config = generator.config()
    prepare_anchor_set(root, names, generator.name, config, per_class, seed,
                       write=process_index == 0)
    if barrier is not None:
        barrier()

    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "anchorset.json").is_file():  # no barrier and rank 0 not there yet
        deadline = time.monotonic() + 60
        while not (root / "anchorset.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
    store = AnchorSet.open(root)
    items = [(c, name, k) for c, name in enumerate(names) for k in range(per_class)]
    mine = [items[i] for i in assigned_indices(len(items), process_index, num_processes)]
    counts = {"already_present": 0, "adopted": 0, "generated": 0}
    todo = []
    with ManifestWriter(store, process_index, num_processes) as writer:
        for c, name, k in mine:
            writer.remove_temp_files(c, k)
            if (c, k) in store.rows:
                counts["already_present"] += 1
            elif (c, k) in store.orphans and writer.adopt(c, name, k,
                                                          generator.describe(c, name, k, seed)):
                counts["adopted"] += 1
            else:
                todo.append((c, name, k))
        desc = f"{generator.name} anchors"
        if num_processes > 1:
            desc += f" (process {process_index} of {num_processes})"
        bar = progress_bar(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="img",
                           enabled=None if process_index == 0 else False)
        shape = None
        try:
            for lo in range(0, len(todo), batch_size):
                batch = todo[lo:lo + batch_size]
                try:
                    images = generator.generate_batch(batch, seed)
                except OSError as exc:  # e.g. a size the renderer cannot draw, a model file missing
                    raise InputError(f"{generator.name} could not make the anchors of class {batch[0][1]!r} "
                                     f"({one_line(exc)}); check the generator options (--size, --model, ...)"
                                     ) from None
                if len(images) != len(batch):
                    raise ValueError(f"{generator.name}: generate_batch returned {len(images)} "
                                     f"images for {len(batch)} items")
                for (c, name, k), img in zip(batch, images):
                    img = as_hwc(img, generator.name)
                    if shape is None:
                        shape = img.shape
                    elif img.shape != shape:
                        raise ValueError(f"{generator.name}: image shape {img.shape} differs "
                                         f"from {shape}")
                    writer.write(c, name, k, img, generator.describe(c, name, k, seed))
                    counts["generated"] += 1
                    bar.update(1)
        finally:
            bar.close()
    seconds = time.perf_counter() - start
    if barrier is not None:
        barrier()
    present: Optional[int] = None
    complete: Optional[bool] = None
    if num_processes == 1 or barrier is not None:
        final = AnchorSet.open(root)
        present = sum(1 for c, _, k in items if (c, k) in final.rows)
        complete = present == len(items) and final.class_names == names
    return {
        "out": str(root), "num_classes": len(names), "per_class": per_class,
        "total": len(items), "process_index": process_index, "num_processes": num_processes,
        "assigned": len(mine), **counts, "seconds": round(seconds, 3),
        "images_per_second": round(counts["generated"] / seconds, 2) if seconds > 0 else None,
        "present": present, "complete": complete,
    }


def format_summary(summaries: Sequence[Dict[str, Any]]) -> str:
    """One line for a run (``summaries``: one dict per process, rank 0 first)."""
    s0 = summaries[0]
    generated = sum(s["generated"] for s in summaries)
    adopted = sum(s["adopted"] for s in summaries)
    present_before = sum(s["already_present"] for s in summaries)
    seconds = max(s["seconds"] for s in summaries)
    rate = f", {generated / seconds:.1f} img/s" if seconds > 0 and generated else ""
    state = ""
    if s0.get("present") is not None:
        state = (" (complete)" if s0["complete"]
                 else f" (incomplete: {s0['present']} of {s0['total']} present)")
    procs = f" on {s0['num_processes']} processes" if s0["num_processes"] > 1 else ""
    return (f"wrote {s0['out']}: {s0['total']} anchors ({s0['num_classes']} classes x "
            f"{s0['per_class']}){state}; generated {generated}, kept {present_before}"
            + (f", adopted {adopted}" if adopted else "")
            + f" in {seconds:.1f}s{rate}{procs}")

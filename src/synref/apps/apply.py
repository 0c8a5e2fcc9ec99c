"""``synref apply OUT``: a results folder (+ the person's decisions) in, the corrected dataset out.

Every sample's final label: a decision in ``decisions.csv`` (from the review page: ``accept`` the
suggestion, ``reject`` it = keep the given label, ``relabel`` to another class) wins; otherwise the
policy ``accept`` decides the rows refine changed: ``"all"`` (default: every change accepted),
``"none"`` (none), or a float P (the changes whose probability is at least P). Review items left
without a decision and not accepted by the policy are *undecided*: they keep their given label and
go to the Label Studio file for a person to label.

Outputs in ``dest`` (default ``OUT/applied``), each written atomically; a re-run rewrites them the
same way (the outputs depend only on the results, the decisions and the options):

- ``labels.csv`` (always): ``index,id,label,class,given_label,given_class,status,file`` per sample
  (``label`` is the final class index: ``synref refine --labels dest/labels.csv`` reads it);
  status is kept / accepted / rejected / relabelled / policy / undecided.
- ``manifest.csv`` (``manifest``): ``path,label,id,given`` with class names, the CSV manifest
  ``synref refine --data`` reads; paths are the original files (the tree's files after ``move``, or
  for data without files: digits / CIFAR arrays, Hugging Face rows).
- ``tree/<class>/<file>`` (``tree``): the images sorted by final class, as hard links to the
  originals (copies across file systems or with ``copy``; image bytes for data without files). The
  tree is built beside and swapped in whole. ``move=True`` removes the originals once the tree
  holds them (a re-run then takes them from the tree).
- ``label_studio.json`` + ``label_studio_config.xml`` (``label-studio``): one task per undecided
  sample: the image URL, the given label, and the suggestion as a prediction with its score.
- ``datasets/`` (``datasets``; Hugging Face data only): a copy of the dataset with a
  ``synref_label`` ClassLabel column (-1 for rows refine left out).
- ``apply.json``: what was done (counts, options, files).

Nothing is ever written inside the data folder (the ``--data`` folder or a folder holding the
images): such a ``dest`` is refused before any work.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union
from urllib.parse import quote

import numpy as np

from .. import __version__
from ..errors import InputError, one_line
from ..io import atomic_open, check_input_file, check_output_dir, remove_stale_temp_files, write_json, write_text
from ..progress import progress as progress_bar
from .report import sample_images
from .results_folder import CHANGED, Results, iter_rows, read_results

__all__ = ["OUTPUTS", "DEFAULT_OUTPUTS", "STATUSES", "parse_accept", "read_decisions", "final_labels", "run_apply",
           "format_apply_summary", "safe_name"]

PathLike = Union[str, os.PathLike]
#: what ``synref apply --to`` can write (labels.csv and apply.json are always written).
OUTPUTS = ("labels", "manifest", "tree", "label-studio", "datasets")
DEFAULT_OUTPUTS = ("labels", "manifest", "tree", "label-studio")
#: a sample's status in labels.csv, by code.
STATUSES = ("kept", "accepted", "rejected", "relabelled", "policy", "undecided")
KEPT, ACCEPTED, REJECTED, RELABELLED, POLICY, UNDECIDED = range(6)
_DECISIONS = {"accept": ACCEPTED, "accepted": ACCEPTED, "reject": REJECTED, "rejected": REJECTED,
              "relabel": RELABELLED, "relabelled": RELABELLED, "other": RELABELLED}
LS_PREFIX = "/data/local-files/?d="


# =============================================================================== options
def parse_accept(value: Union[str, float, Sequence[str], None]) -> Union[str, float]:
    """``"all"``, ``"none"`` or a probability P from ``all`` / ``none`` / ``above P`` (a string, or
    the CLI's tokens ``["above", "0.9"]``); InputError naming ``--accept`` otherwise."""
    if value is None:
        return "all"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        tokens = ["above", str(value)]
    elif isinstance(value, str):
        tokens = value.replace("=", " ").split()
    else:
        tokens = [str(v) for v in value]
    if len(tokens) == 1 and tokens[0].lower() in ("all", "none"):
        return tokens[0].lower()
    if len(tokens) == 2 and tokens[0].lower() == "above":
        try:
            p = float(tokens[1])
        except ValueError:
            p = float("nan")
        if 0.0 <= p <= 1.0:
            return p
        raise InputError(f"--accept above P: P must be a probability in [0, 1], got {tokens[1]!r}")
    raise InputError(f"--accept must be all, none or 'above P', got {' '.join(tokens)!r}")


def _outputs(outputs: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    items = [o.strip().lower() for o in (outputs.split(",") if isinstance(outputs, str) else outputs) if o.strip()]
    bad = [o for o in items if o not in OUTPUTS]
    if bad:
        raise InputError(f"--to {bad[0]!r} is not an output; choose from {', '.join(OUTPUTS)}")
    return tuple(dict.fromkeys(["labels"] + items))


# =============================================================================== decisions
@dataclass
class Decisions:
    """Decisions by row index: ``code`` (ACCEPTED / REJECTED / RELABELLED) and the final label."""

    code: Dict[int, int] = field(default_factory=dict)
    label: Dict[int, int] = field(default_factory=dict)
    source: str = ""


def _decision_rows(path: Path) -> Iterator[Tuple[int, Dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            for need in ("index", "decision"):
                if need not in fields:
                    columns = ", ".join(reader.fieldnames or []) or "none"
                    raise InputError(f"{path} has no {need!r} column (columns: {columns}); download it from the "
                                     f"review page")
            for number, row in enumerate(reader, 1):
                yield number, {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {one_line(exc)}") from None


def read_decisions(path: PathLike, results: Results) -> Decisions:
    """The decisions in ``path`` (the review page's ``decisions.csv``: index, decision, label, ...)
    checked against ``results``: the index must be a row, its given (and suggested) label those
    of these results, ``accept`` only on a review item, ``relabel`` with a class (``label`` or
    ``class``), each index once. InputError naming the file and row."""
    path = check_input_file(Path(path), "--decisions file")
    names = results.class_names
    by_name = {n: i for i, n in enumerate(names)}
    proposal = {int(r): int(s) for r, s in zip(results.items, results.proposal)}
    out = Decisions(source=str(path))
    for number, row in _decision_rows(path):
        where = f"{path} row {number}"
        try:
            index = int(row["index"])
        except ValueError:
            raise InputError(f"{where}: index {row['index']!r} is not an integer") from None
        if not 0 <= index < results.num_samples:
            raise InputError(f"{where}: index {index} is outside the {results.num_samples} samples of {results.out}")
        if index in out.code:
            raise InputError(f"{where}: index {index} is decided twice")
        code = _DECISIONS.get(row["decision"].lower())
        if code is None:
            raise InputError(f"{where}: decision {row['decision']!r} is not accept, reject or relabel")
        given = int(results.given[index])
        for column, expected in (("given_label", given), ("suggested_label", proposal.get(index))):
            text = row.get(column, "")
            if text and expected is not None and text != str(expected):
                raise InputError(f"{where}: index {index} has {column} {text} here but {expected} in {results.out}: "
                                 f"were these decisions made for other results?")
        if code == ACCEPTED:
            if index not in proposal:
                raise InputError(f"{where}: index {index} has no suggestion to accept (it is neither changed nor "
                                 f"flagged in {results.out})")
            label = proposal[index]
        elif code == REJECTED:
            label = given
        else:
            label = _relabel_target(row, names, by_name, where)
        out.code[index], out.label[index] = code, label
    return out


def _relabel_target(row: Dict[str, str], names: List[str], by_name: Dict[str, int], where: str) -> int:
    text, cls = row.get("label", ""), row.get("class", "")
    if text:
        try:
            label = int(text)
        except ValueError:
            raise InputError(f"{where}: label {text!r} is not a class index") from None
        if not 0 <= label < len(names):
            raise InputError(f"{where}: label {label} is outside [0, {len(names)})")
        if cls and cls != names[label]:
            raise InputError(f"{where}: label {label} is class {names[label]!r}, not {cls!r}")
        return label
    if cls:
        if cls not in by_name:
            raise InputError(f"{where}: unknown class {cls!r}")
        return by_name[cls]
    raise InputError(f"{where}: relabel needs a label (class index) or class (name)")


def final_labels(results: Results, decisions: Optional[Decisions], accept: Union[str, float]
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """``(labels (N,) int64, status (N,) int8 codes of STATUSES)``: decisions first, then the
    policy on the changed rows; review items left over are undecided (given label kept)."""
    labels = results.given.copy()
    status = np.full(results.num_samples, KEPT, dtype=np.int8)
    items, proposal = results.items, results.proposal
    status[items] = UNDECIDED
    if accept == "all":
        by_policy = results.kind == CHANGED
    elif accept == "none":
        by_policy = np.zeros(len(items), dtype=bool)
    else:
        by_policy = (results.kind == CHANGED) & (np.nan_to_num(results.p, nan=-1.0) >= float(accept))
    labels[items[by_policy]] = proposal[by_policy]
    status[items[by_policy]] = POLICY
    if decisions is not None:
        for index, code in decisions.code.items():
            labels[index], status[index] = decisions.label[index], code
    return labels, status


# =============================================================================== files
def safe_name(name: str, limit: int = 100) -> str:
    """A file / folder name for a class name or file name: no separators, control characters or
    leading dots ("." / ".." impossible), at most ``limit`` characters, never empty."""
    text = "".join("_" if (ch in '/\\:*?"<>|' or ord(ch) < 32 or ch == "\x7f") else ch for ch in str(name))
    text = text.strip().lstrip(".")
    return (text[:limit].rstrip() or "_")


def _class_folders(names: Sequence[str]) -> List[str]:
    """Distinct folder names for the classes (a clash after cleaning gets ``~<class index>``)."""
    seen: Set[str] = set()
    out = []
    for i, name in enumerate(names):
        folder = safe_name(name)
        if folder.lower() in seen:
            folder = f"{folder}~{i}"
        seen.add(folder.lower())
        out.append(folder)
    return out


def _data_folders(results: Results) -> Set[str]:
    """Real paths of the data: the ``--data`` folder and every folder holding an image file."""
    from ..data.hf import parse_ref

    folders: Set[str] = set()
    data = str(results.summary.get("data") or "")
    if data and os.path.isdir(os.path.expanduser(data)):
        folders.add(os.path.expanduser(data))
    for row in iter_rows(results.out):
        path = row["path"]
        ref = parse_ref(path) if path else None
        if ref is not None and os.path.isdir(ref[0]):
            folders.add(ref[0])
        elif path and ref is None:
            folders.add(os.path.dirname(path) or ".")
    return {os.path.realpath(f) for f in folders}


def _check_dest(dest: Path, results: Results) -> None:
    check_output_dir(dest, "--dest")
    real = Path(os.path.realpath(dest))
    folders = _data_folders(results)
    for folder in [real, *real.parents]:
        if str(folder) in folders:
            raise InputError(f"--dest {dest} is inside the data folder {folder}: synref apply never writes into the "
                             f"data; choose a --dest outside it")


def _link_or_copy(src: str, dst: Path, copy: bool) -> str:
    """Hard link ``src`` at ``dst`` ("link"), or copy it ("copy": asked, or another file system)."""
    if not copy:
        try:
            os.link(src, dst)
            return "link"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES,
                                 getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)):
                raise InputError(f"cannot link {src} into {dst.parent}: {one_line(exc)}") from None
    try:
        shutil.copy2(src, dst)
    except OSError as exc:
        raise InputError(f"cannot copy {src} to {dst}: {one_line(exc)}") from None
    return "copy"


class _Tree:
    """Builds ``dest/tree`` in ``dest/.tree.partial`` and swaps it in whole."""

    def __init__(self, dest: Path, names: Sequence[str], copy: bool) -> None:
        self.dest, self.final, self.partial, self.old = dest, dest / "tree", dest / ".tree.partial", dest / ".tree.old"
        self.copy = copy
        self.folders = _class_folders(names)
        self.used: Set[str] = set()
        self.counts = {"link": 0, "copy": 0, "written": 0}
        # a run killed mid-swap: the old tree is the one to keep
        if self.old.is_dir():
            if self.final.is_dir():
                shutil.rmtree(self.old)
            else:
                os.replace(self.old, self.final)
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)

    def place(self, label: int, name: str, index: int) -> Tuple[Path, str]:
        """(absolute target in the partial tree, its path relative to the tree) for a sample."""
        folder = self.folders[label]
        stem, ext = os.path.splitext(safe_name(name))
        rel = f"{folder}/{stem}{ext}"
        if rel.lower() in self.used:
            rel = f"{folder}/{stem}~{index}{ext}"
        self.used.add(rel.lower())
        target = self.partial / rel
        target.parent.mkdir(exist_ok=True)
        return target, rel

    def add_file(self, src: str, label: int, name: str, index: int) -> str:
        target, rel = self.place(label, name, index)
        self.counts[_link_or_copy(src, target, self.copy)] += 1
        return rel

    def add_bytes(self, data: bytes, label: int, name: str, index: int) -> str:
        target, rel = self.place(label, name, index)
        target.write_bytes(data)
        self.counts["written"] += 1
        return rel

    def swap(self) -> None:
        if self.final.exists():
            os.replace(self.final, self.old)
        os.replace(self.partial, self.final)
        if self.old.exists():
            shutil.rmtree(self.old)

    def discard(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)


def _previous_files(dest: Path) -> Dict[int, Path]:
    """index -> file in the current tree, from the last run's labels.csv (what ``move`` left)."""
    files: Dict[int, Path] = {}
    previous = dest / "labels.csv"
    if not previous.is_file():
        return files
    try:
        with open(previous, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("file"):
                    files[int(row["index"])] = dest / "tree" / row["file"]
    except (OSError, ValueError, KeyError, csv.Error):
        return {}
    return files


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8))).save(buf, format="PNG")
    return buf.getvalue()


def _image_name(data: bytes, name: str) -> str:
    """``name`` with an extension matching the image's format when it has none."""
    if os.path.splitext(name)[1]:
        return name
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "img").lower()
    except Exception:
        fmt = "img"
    return f"{name}.{'jpg' if fmt == 'jpeg' else fmt}"


def _ls_url(path: str, prefix: str, root: str, where: str) -> str:
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute, root)
    if rel.startswith(".."):
        raise InputError(f"{where}: {absolute} is outside --ls-root {root}; give a --ls-root that holds the images")
    return prefix + quote(rel.replace(os.sep, "/"), safe="/")


def _ls_config(names: Sequence[str]) -> str:
    from xml.sax.saxutils import quoteattr

    choices = "\n".join(f"    <Choice value={quoteattr(str(n))}/>" for n in names)
    return ('<View>\n  <Image name="image" value="$image"/>\n  <Header value="given: $given_label, '
            'suggested: $suggested_label (p = $p)"/>\n  <Choices name="label" toName="image" choice="single">\n'
            f"{choices}\n  </Choices>\n</View>\n")


# =============================================================================== run
def run_apply(out_dir: PathLike, *, decisions: Optional[PathLike] = None,
              accept: Union[str, float, Sequence[str]] = "all", dest: Optional[PathLike] = None,
              outputs: Union[str, Sequence[str], None] = None, copy: bool = False, move: bool = False,
              ls_prefix: str = LS_PREFIX, ls_root: str = "/") -> Dict[str, Any]:
    """Write the corrected dataset of the results folder ``out_dir`` into ``dest`` (default
    ``OUT/applied``; see the module docstring); returns the summary (also ``dest/apply.json``).

    Args:
        decisions: the review page's ``decisions.csv``.
        accept: the policy for the changes without a decision: "all", "none", a probability P
            (or "above P").
        outputs: a subset of :data:`OUTPUTS` (labels.csv and apply.json are always written);
            None: :data:`DEFAULT_OUTPUTS`, less the image outputs when the results have no images
            (a features-only run).
        copy: copy the images into the tree instead of hard-linking them.
        move: move the originals into the tree (removed from where they were).
        ls_prefix, ls_root: Label Studio image URLs are ``ls_prefix`` + the path relative to
            ``ls_root`` (Label Studio's local-files serving, its document root).
    Everything is checked (options, decisions, destination) before anything is written."""
    policy = parse_accept(accept)
    wanted = _outputs(DEFAULT_OUTPUTS if outputs is None else outputs)
    if move and copy:
        raise InputError("give --move or --copy, not both")
    if move and "tree" not in wanted:
        raise InputError("--move goes with the tree output (--to ...,tree)")
    results = read_results(out_dir)
    out = results.out
    dest_dir = Path(dest) if dest is not None else out / "applied"
    _check_dest(dest_dir, results)
    chosen = read_decisions(decisions, results) if decisions is not None else None
    labels, status = final_labels(results, chosen, policy)
    data_spec = str(results.summary.get("data") or "")
    if "datasets" in wanted:
        from ..data.hf import is_hf_dataset

        if not data_spec or not is_hf_dataset(data_spec):
            raise InputError(f"--to datasets writes a copy of a Hugging Face dataset; the data of {out} is "
                             f"{data_spec or 'unknown'}")
    first = next(iter_rows(out))
    if not first["path"]:
        if not _has_images(results, first["index"]):
            if outputs is not None and set(wanted) - {"labels", "datasets"}:
                raise InputError(f"--to {','.join(wanted)}: the results {out} have no images (no paths, and --data "
                                 f"{data_spec or '?'} cannot be loaded); --to labels is what can be written")
            wanted = tuple(w for w in wanted if w in ("labels", "datasets"))
    if not first["path"] or first["path"].startswith("hf:"):
        for need in ("manifest", "label-studio"):
            if need in wanted and "tree" not in wanted:
                raise InputError(f"--to {need}: the samples of {out} are not image files; add the tree output "
                                 f"(--to {need},tree) to write them as files")
    dest_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(dest_dir, recursive=False)
    info = _write_rows(results, labels, status, dest_dir, wanted, copy=copy, move=move, ls_prefix=ls_prefix,
                       ls_root=os.path.abspath(os.path.expanduser(ls_root)))
    if "datasets" in wanted:
        info["files"].append(str(_write_datasets(results, labels, dest_dir)))
    summary = {
        "results": str(out), "dest": str(dest_dir), "decisions": None if chosen is None else chosen.source,
        "accept": policy, "outputs": list(wanted), "num_samples": results.num_samples,
        "review_items": int(len(results.items)), "changed_by_refine": int(results.changed.sum()),
        "flagged": int((results.kind != CHANGED).sum()),
        "status": {name: int((status == code).sum()) for code, name in enumerate(STATUSES)},
        "labels_changed": int((labels != results.given).sum()), **info, "synref_version": __version__,
    }
    write_json(dest_dir / "apply.json", summary)
    return summary


def _has_images(results: Results, index: int) -> bool:
    """Whether the images of results without paths can be loaded (``--data`` digits, CIFAR)."""
    if not results.summary.get("data"):
        return False
    return sample_images(results.summary, [{"index": index, "path": ""}])(index) is not None


class _RowFiles:
    """The atomic handles of the per-row outputs (labels.csv, manifest.csv, label_studio.json):
    all renamed into place only when the whole pass succeeded."""

    NAMES = {"labels": "labels.csv", "manifest": "manifest.csv", "label-studio": "label_studio.json"}

    def __init__(self, dest: Path, wanted: Sequence[str]) -> None:
        self.stack = contextlib.ExitStack()
        self.dest, self.wanted = dest, wanted

    def __enter__(self) -> Dict[str, Any]:
        handles = {}
        for key, name in self.NAMES.items():
            if key in self.wanted:
                extra = {"newline": ""} if name.endswith(".csv") else {}
                handles[key] = self.stack.enter_context(atomic_open(self.dest / name, "w", encoding="utf-8", **extra))
        return handles

    def __exit__(self, *exc: Any) -> Any:
        return self.stack.__exit__(*exc)


def _task(i: int, row_id: str, image: str, given: str, suggested: str, p: float) -> Dict[str, Any]:
    """One Label Studio task: the image, the given label, the suggestion as a prediction."""
    return {"data": {"image": image, "synref_index": i, "synref_id": row_id, "given_label": given,
                     "suggested_label": suggested, "p": round(p, 6)},
            "predictions": [{"model_version": f"synref-{__version__}", "score": round(p, 6),
                             "result": [{"id": f"synref-{i}", "from_name": "label", "to_name": "image",
                                         "type": "choices", "value": {"choices": [suggested]}}]}]}


def _write_rows(results: Results, labels: np.ndarray, status: np.ndarray, dest: Path, wanted: Sequence[str], *,
                copy: bool, move: bool, ls_prefix: str, ls_root: str) -> Dict[str, Any]:
    """One pass over refined_labels.csv writing labels.csv, manifest.csv, the tree and the Label
    Studio tasks; returns ``{"files", "tree" (counts or None), "label_studio_tasks"}``."""
    from ..data.hf import parse_ref, ref_image_bytes

    names = results.class_names
    p_of = {int(r): float(p) for r, p in zip(results.items, results.p)}
    proposal = {int(r): int(s) for r, s in zip(results.items, results.proposal)}
    tree = _Tree(dest, names, copy) if "tree" in wanted else None
    previous = _previous_files(dest) if tree is not None else {}
    arrays = None
    moved: List[Tuple[str, Path]] = []
    tasks = 0
    try:
        with _RowFiles(dest, wanted) as handles:
            labels_csv = csv.writer(handles["labels"])
            labels_csv.writerow(["index", "id", "label", "class", "given_label", "given_class", "status", "file"])
            manifest = csv.writer(handles["manifest"]) if "manifest" in handles else None
            if manifest is not None:
                manifest.writerow(["path", "label", "id", "given"])
            ls = handles.get("label-studio")
            if ls is not None:
                ls.write("[")
            bar = progress_bar(total=results.num_samples, desc="apply", unit="img",
                               enabled=None if results.num_samples >= 5000 else False)
            for row in iter_rows(results.out):
                i, path = row["index"], row["path"]
                label, given, code = int(labels[i]), int(results.given[i]), int(status[i])
                ref = parse_ref(path) if path else None
                is_file = bool(path) and ref is None
                source = path
                if is_file and not os.path.exists(path) and i in previous and previous[i].exists():
                    source = str(previous[i])  # moved into the tree by an earlier --move run
                rel = ""
                if tree is not None:
                    if is_file:
                        if not os.path.exists(source):
                            raise InputError(f"sample {i} ({row['id']}): image file not found: {path}")
                        rel = tree.add_file(source, label, os.path.basename(path), i)
                        if move and source == path:
                            moved.append((path, tree.final / rel))
                    elif ref is not None:
                        data, name = ref_image_bytes(path)
                        rel = tree.add_bytes(data, label, _image_name(data, name), i)
                    else:
                        if arrays is None:
                            arrays = sample_images(results.summary, [{"index": 0, "path": ""}])
                        image = arrays(i)
                        if image is None:
                            raise InputError(f"sample {i}: its image cannot be loaded from --data "
                                             f"{results.summary.get('data')}")
                        rel = tree.add_bytes(_png_bytes(image), label, f"{i}.png", i)
                labels_csv.writerow([i, row["id"], label, names[label], given, names[given], STATUSES[code], rel])
                where = str(tree.final / rel) if rel and (move or not is_file or source != path) else path
                if manifest is not None:
                    manifest.writerow([os.path.abspath(where), names[label], row["id"], names[given]])
                if ls is not None and code == UNDECIDED:
                    image = _ls_url(where, ls_prefix, ls_root, f"sample {i}")
                    task = _task(i, row["id"], image, names[given], names[proposal[i]], p_of[i])
                    ls.write(("," if tasks else "") + "\n" + json.dumps(task, ensure_ascii=False))
                    tasks += 1
                bar.update(1)
            bar.close()
            if ls is not None:
                ls.write("\n]\n")
            if ls is not None:
                write_text(dest / "label_studio_config.xml", _ls_config(names))
        if tree is not None:
            tree.swap()
    except BaseException:
        if tree is not None:
            tree.discard()
        raise
    for original, target in moved:  # the tree holds them now
        if target.exists() and os.path.exists(original):
            os.unlink(original)
    files = [str(dest / handle) for key, handle in _RowFiles.NAMES.items() if key in wanted]
    if tree is not None:
        files.append(str(tree.final))
    if "label-studio" in wanted:
        files.append(str(dest / "label_studio_config.xml"))
    return {"files": files, "tree": None if tree is None else {**tree.counts, "moved": len(moved)},
            "label_studio_tasks": tasks}


def _write_datasets(results: Results, labels: np.ndarray, dest: Path) -> Path:
    """``dest/datasets``: the Hugging Face dataset with a ``synref_label`` column, built beside and
    swapped in. Rows map by id (the row number synref gave them); rows refine left out get -1."""
    from ..data.hf import hf_num_rows, write_with_labels

    spec, split = str(results.summary["data"]), str(results.summary.get("split") or "train")
    total = hf_num_rows(spec, split)
    full = np.full(total, -1, dtype=np.int64)
    for row in iter_rows(results.out):
        try:
            position = int(row["id"])
        except ValueError:
            raise InputError(f"{results.csv_path}: id {row['id']!r} is not a row number of {spec}") from None
        if not 0 <= position < total:
            raise InputError(f"{results.csv_path}: id {position} is outside the {total} rows of {spec}")
        full[position] = labels[row["index"]]
    final, partial, old = dest / "datasets", dest / ".datasets.partial", dest / ".datasets.old"
    for leftover in (partial, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        write_with_labels(spec, split, full, results.class_names, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def format_apply_summary(summary: Dict[str, Any]) -> str:
    """The lines ``synref apply`` prints."""
    st = summary["status"]
    accept = summary["accept"]
    policy = f"above {accept:g}" if isinstance(accept, float) else accept
    decided = st["accepted"] + st["rejected"] + st["relabelled"]
    lines = [f"{summary['num_samples']:,} samples; {summary['review_items']:,} to review "
             f"({summary['changed_by_refine']:,} changed by refine, {summary['flagged']:,} flagged)",
             f"decisions: {decided:,} ({st['accepted']:,} accepted, {st['rejected']:,} rejected, "
             f"{st['relabelled']:,} relabelled)" + (f" from {summary['decisions']}" if summary["decisions"] else "")
             + f"; --accept {policy}: {st['policy']:,} more changes accepted",
             f"{summary['labels_changed']:,} final labels differ from the given ones; {st['undecided']:,} undecided"
             + (f" ({summary['label_studio_tasks']:,} Label Studio tasks)" if "label-studio" in summary["outputs"]
                else "")]
    tree = summary.get("tree")
    if tree:
        lines.append(f"tree: {tree['link']:,} hard links, {tree['copy']:,} copies, {tree['written']:,} images written"
                     + (f", {tree['moved']:,} originals moved" if tree.get("moved") else ""))
    lines.append("wrote " + ", ".join(summary["files"]) + ", " + str(Path(summary["dest"]) / "apply.json"))
    return "\n".join(lines)

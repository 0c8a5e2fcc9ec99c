"""The pieces every experiment shares, written once: training schedules, splits, anchors (glyph
anchors for digits, the real-anchor stand-in for CIFAR, or an anchor set), label noise.

:func:`load_experiment_data` gives the splits and anchors of a dataset under a protocol;
:func:`inject_noise` / :func:`noisy_labels` give a noise setting's labels.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..anchors import create_generator, load_matched_anchors, match_format
from ..data import LabeledImages, load_cifar, load_dataset, load_digits_dataset, load_labels_file, split_indices
from ..hashing import digest, images_hash
from ..errors import InputError
from ..models import create_model, predict_proba
from ..noise import NOISE_MODELS, format_noise_spec, parse_noise_spec
from ..pipeline import fold_schedule
from ..train import TrainConfig, fit
from ..validation import check_classes_present

__all__ = [
    "digits_standard", "digits_paper_finetune", "digits_synref_finetune", "cpu_cifar_schedule", "eta_schedule",
    "ExperimentData", "load_experiment_data", "digits_split", "stand_in_anchors", "make_glyph_anchors",
    "inject_noise", "noisy_labels", "noise_files", "COMMUNITY_FILES", "NOISE_SETTINGS", "DATASETS",
    "GIVEN", "is_user_dataset", "user_dataset_name", "load_user_data",
]

#: the paper's noise settings (the columns of its table).
NOISE_SETTINGS: Tuple[str, ...] = ("pmd-0.35", "pmd-0.7", "pmd-0.35+u-0.3", "pmd-0.35+u-0.6", "pmd-0.35+a-0.3")
DATASETS: Tuple[str, ...] = ("cifar10", "cifar100", "digits")
#: the noise setting of a user dataset's own given labels (its label file or its folder / CSV labels).
GIVEN = "given"
#: community label files (first 45,000 CIFAR training images) per noise setting.
COMMUNITY_FILES: Dict[str, str] = {
    "pmd-0.35": "{dataset}-1-0.35.npy", "pmd-0.7": "{dataset}-1-0.70.npy",
    "pmd-0.35+u-0.3": "{dataset}-1-0.35_U_0.3.npy", "pmd-0.35+u-0.6": "{dataset}-1-0.35_U_0.6.npy",
    "pmd-0.35+a-0.3": "{dataset}-1-0.35_A_0.3.npy",
}


# ------------------------------------------------------------------------------ schedules
def digits_standard() -> TrainConfig:
    """The paper's recipe (SGD, momentum 0.9, wd 5e-4, multistep, 1 warm-up epoch, crop pad) scaled
    to 1,200 8x8 images: 30 epochs, batch 64, lr 0.05, x0.1 at 15 and 25; no flips (digits):
    :func:`~synref.pipeline.fold_schedule` (30), the recipe of ``synref refine --train``'s fold
    networks too."""
    return fold_schedule(30)


def digits_paper_finetune() -> TrainConfig:
    """The paper's fine-tuning (lr 1e-3, wd 1e-4, 50 epochs, x0.1 at [20, 40]) scaled to 30 epochs."""
    return TrainConfig.paper_finetune(epochs=30, milestones=[12, 24], batch_size=64, hflip=False)


def digits_synref_finetune() -> TrainConfig:
    """synref's fine-tuning: lr 1e-2 (measured better than 1e-3 on digits: see docs/benchmarks.md)."""
    return TrainConfig(epochs=30, batch_size=64, lr=0.01, momentum=0.9, weight_decay=1e-4,
                       milestones=[15, 25], gamma=0.1, warmup_epochs=0, hflip=False)


def cpu_cifar_schedule(epochs: int, lr: float) -> TrainConfig:
    """The CPU protocol's CIFAR schedule: batch 128, SGD momentum 0.9, wd 5e-4, lr x0.1 at 55 %
    and 80 % of the epochs, 1 warm-up epoch, crop + flip."""
    return TrainConfig(epochs=epochs, batch_size=128, lr=lr, momentum=0.9, weight_decay=5e-4,
                       milestones=[int(round(epochs * 0.55)), int(round(epochs * 0.8))], gamma=0.1,
                       warmup_epochs=1, hflip=True)


def eta_schedule(seed: int) -> TrainConfig:
    """The default recipe of the clean-label model whose softmax drives generated PMD noise:
    8 epochs, weakly trained, so the margins vary."""
    return TrainConfig(epochs=8, lr=0.01, batch_size=64, milestones=[], warmup_epochs=0, seed=seed)


# ------------------------------------------------------------------------------ data
@dataclass
class ExperimentData:
    """One dataset's splits and anchors (uint8 images (N, H, W, C), int64 labels (N,))."""

    dataset: str
    class_names: List[str]
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    anchors: LabeledImages
    anchor_source: str
    #: identifies the images of every split (features are cached under it): seed-independent for
    #: CIFAR (fixed splits), per seed for digits (the split depends on the seed).
    key: str = ""
    #: a user dataset's given (noisy) labels (N,) and where they come from (the ``given`` setting).
    given: Optional[np.ndarray] = None
    given_source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def digits_split(labels: np.ndarray, *, val_fraction: float, test_fraction: float,
                 seed: int) -> List[np.ndarray]:
    """(train, val, test) indices of scikit-learn's digits: a stratified split with ``seed``."""
    return split_indices(labels, fractions=(1 - test_fraction - val_fraction, val_fraction, test_fraction),
                         seed=seed)


def stand_in_anchors(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """The *real-anchor stand-in*: ``per_class`` indices per class among ``labels`` (the clean
    validation labels), drawn with seed 0 and sorted within each class."""
    rng = np.random.default_rng(0)
    picks = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class + 1:
            raise InputError(f"validation split has {len(pool)} images of class {c}; the real-anchor stand-in "
                             f"needs more than {per_class}")
        picks.append(np.sort(rng.choice(pool, per_class, replace=False)))
    return np.concatenate(picks)


def make_glyph_anchors(class_names: Sequence[str], per_class: int, *, size: Tuple[int, int], channels: int,
                       seed: int = 0) -> LabeledImages:
    """Procedural glyph anchors rendered at 32 px and brought to the dataset's size and channels."""
    generator = create_generator("glyph", size=32, channels=1)
    anchors = generator.generate(list(class_names), per_class, seed=seed)
    return match_format(anchors, size=tuple(size), channels=channels)


def load_experiment_data(dataset: str, protocol: Any, *, data: Optional[str] = None, anchors: Optional[str] = None,
                         seed: int = 0) -> ExperimentData:
    """Splits and anchors of ``dataset`` under ``protocol`` (a :class:`~synref.experiments.protocol.Protocol`).

    digits: the stratified split of :func:`digits_split` (per seed), glyph anchors (``seed``) or
    the anchor set ``anchors``. CIFAR (official python layout in ``data``): train = the first
    ``protocol.train_size`` of the first 45,000 training images, validation = images
    45,000-49,999 with clean labels, test = the test images (first ``protocol.test_size``);
    anchors: the anchor set ``anchors``, else the real-anchor stand-in (:func:`stand_in_anchors`,
    removed from validation). Test images and clean training labels are never used.
    """
    if dataset == "digits":
        digits = load_digits_dataset()
        tr, va, te = digits_split(digits.labels, val_fraction=protocol.val_fraction,
                                  test_fraction=protocol.test_fraction, seed=seed)
        train, val, test = digits.subset(tr), digits.subset(va), digits.subset(te)
        if anchors:
            anchor_set, _ = load_matched_anchors(Path(anchors), digits.class_names, size=train.images.shape[1:3],
                                                 channels=train.images.shape[-1])
            source = f"anchor set {anchors}"
        else:
            anchor_set = make_glyph_anchors(digits.class_names, protocol.anchors_per_class,
                                            size=train.images.shape[1:3], channels=train.images.shape[-1], seed=seed)
            source = f"glyph (procedural synthetic), {protocol.anchors_per_class} per class"
        return ExperimentData("digits", list(digits.class_names), train, val, test, anchor_set, source,
                              key=f"digits-split{seed}")

    if not data:
        raise InputError(f"--dataset {dataset} needs --data DIR (the official CIFAR python layout; see "
                         f"cifar10_python_from_jpeg.py for JPEG copies)")
    full = load_cifar(data, split="train")
    expected = 10 if dataset == "cifar10" else 100
    if full.num_classes != expected:
        raise InputError(f"--data {data}: holds {full.num_classes}-class CIFAR, not {dataset}")
    if len(full) != 50000:
        raise InputError(f"--data {data}: expected the 50,000 official training images, found {len(full)}")
    test = load_cifar(data, split="test")
    n_train = 45000 if protocol.train_size is None else int(protocol.train_size)
    if not 1 <= n_train <= 45000:
        raise InputError(f"protocol: train_size must be in [1, 45000], got {n_train}")
    train = full.subset(np.arange(n_train))
    val_idx = np.arange(45000, 50000)
    if anchors:
        anchor_set, _ = load_matched_anchors(Path(anchors), full.class_names, size=full.images.shape[1:3],
                                             channels=full.images.shape[-1])
        source = f"anchor set {anchors} ({len(anchor_set)} images)"
        val = full.subset(val_idx)
    else:
        pick = stand_in_anchors(full.labels[val_idx], protocol.anchors_per_class, full.num_classes)
        anchor_set = full.subset(val_idx[pick])
        val = full.subset(np.setdiff1d(val_idx, val_idx[pick]))
        source = (f"real-anchor stand-in: {protocol.anchors_per_class} clean validation images per class "
                  f"(from 45000-49999, removed from validation)")
    if protocol.test_size is not None:
        test = test.subset(np.arange(min(int(protocol.test_size), len(test))))
    return ExperimentData(dataset, list(full.class_names), train, val, test, anchor_set, source,
                          key=f"{dataset}-train{n_train}-test{len(test)}")


# ------------------------------------------------------------------------------ user datasets
def is_user_dataset(dataset: str) -> bool:
    """True when ``dataset`` is not a built-in name (cifar10, cifar100, digits): an image folder or a
    CSV manifest of the user's."""
    return str(dataset) not in DATASETS


def user_dataset_name(spec: str) -> str:
    """The table name of a user dataset: its folder or CSV file name."""
    path = Path(str(spec).rstrip("/\\"))
    name = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in (path.stem or path.name)) or "data"
    return name + "-data" if name in DATASETS else name


def _split_in_classes(spec: str, split: str, class_names: List[str]) -> Optional[LabeledImages]:
    """The ``split`` split of ``spec`` (CSV split column or split folder) with labels re-indexed to
    ``class_names`` (by name); None when the dataset has no such split."""
    try:
        part = load_dataset(spec, split=split)
    except InputError as exc:
        if "no " in str(exc) and repr(split) in str(exc):
            return None
        raise
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [n for n in part.class_names if n not in index]
    if unknown:
        raise InputError(f"{spec}: split {split!r} has class {unknown[0]!r}, not a class of the training split")
    labels = np.array([index[part.class_names[label]] for label in part.labels], dtype=np.int64)
    return LabeledImages(None, labels, list(class_names), paths=part.paths, ids=part.ids)


def load_user_data(spec: str, *, anchors: Optional[str], split: str = "train", labels: Optional[str] = None,
                   clean_labels: Optional[str] = None, test_split: Optional[str] = "test") -> ExperimentData:
    """A user's image folder or CSV manifest as :class:`ExperimentData` (images stay files: the
    features are streamed from them).

    ``train``: the ``split`` split (CSV ``split`` column or split folders; the whole set when it has
    none). Its given labels (the ``given`` noise setting): ``labels`` (a label file), else the
    dataset's own. Its clean labels (what every row is measured against): ``clean_labels`` (a label
    file), else -- when ``labels`` is given -- the dataset's own. ``test``: the clean
    ``test_split`` split when the dataset has one (a linear probe on the encoder features measures
    each method's labels there), else empty. ``anchors``: an anchor set from ``synref generate``,
    matched by class name (required)."""
    from ..anchors import load_matched_anchors

    train = load_dataset(spec, split=split)
    if len(train) == 0:
        raise InputError(f"dataset {spec} is empty")
    n = len(train)
    if labels is None and clean_labels is None:
        raise InputError(f"bench on {spec} needs clean labels to measure against: give --labels FILE (the given, "
                         f"noisy labels; the dataset's own are then the clean ones) or --clean-labels FILE")
    match = dict(paths=train.paths, ids=train.ids, class_names=train.class_names)
    given = train.labels if labels is None else load_labels_file(labels, num_samples=n, num_classes=train.num_classes,
                                                                 **match)
    clean = train.labels if clean_labels is None else load_labels_file(clean_labels, num_samples=n,
                                                                       num_classes=train.num_classes, **match)
    check_classes_present(given, train.class_names, f"--dataset {spec}")
    if not anchors:
        raise InputError(f"bench on {spec} needs --anchors DIR (an anchor set from synref generate)")
    anchor_set, _ = load_matched_anchors(Path(anchors), train.class_names, decode=False)
    names = list(train.class_names)
    empty = LabeledImages(None, np.zeros(0, np.int64), names, paths=[])
    test = None if test_split is None or test_split == split else _split_in_classes(spec, test_split, names)
    train = LabeledImages(None, clean, names, paths=train.paths, ids=train.ids)
    name = user_dataset_name(spec)
    return ExperimentData(name, names, train, empty, test if test is not None else empty, anchor_set,
                          f"anchor set {anchors} ({len(anchor_set)} images)",
                          # the content: the files (path, size, time), the given and clean labels, the classes
                          key=f"{name}-" + digest(str(Path(spec).resolve()), split, test_split,
                                                  images_hash(None, train.paths), np.asarray(given, np.int64),
                                                  np.asarray(clean, np.int64), names)[:12],
                          given=np.asarray(given, dtype=np.int64),
                          given_source=f"file {Path(labels).name}" if labels else "the dataset's labels")


# ------------------------------------------------------------------------------ noise
def inject_noise(images: np.ndarray, labels: np.ndarray, steps: Sequence[Tuple[str, float]], *,
                 num_classes: int, seed: int, pmd_type: int = 1, model: str = "small_cnn",
                 eta_config: Optional[TrainConfig] = None,
                 class_map: Optional[Dict[int, int]] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Apply noise ``steps`` to clean ``labels`` (N,), in order. PMD trains a model on the clean
    labels for eta (:func:`eta_schedule` unless ``eta_config``) and calibrates the factor.

    Returns the noisy labels (N,) and a dict describing what was done (factor, rates).
    """
    info: Dict[str, Any] = {"setting": format_noise_spec(steps), "steps": []}
    current = np.asarray(labels, dtype=np.int64).copy()
    for kind, rate in steps:
        probs = None
        if kind == "pmd":
            cfg = eta_config or eta_schedule(seed)
            eta_model = fit(create_model(model, num_classes=num_classes, in_channels=images.shape[-1], seed=seed),
                            images, current, config=cfg, desc="PMD eta model").model
            probs = predict_proba(eta_model, images)
        new, step = NOISE_MODELS.get(kind)(current, rate, num_classes=num_classes, seed=seed, probs=probs,
                                           pmd_type=pmd_type, class_map=class_map)
        if probs is not None:
            step["eta_train_acc"] = float(np.mean(probs.argmax(1) == current))
        step["changed"] = float(np.mean(new != current))
        current = new
        info["steps"].append(step)
    info["noise_rate"] = float(np.mean(current != labels))
    return current, info


def noise_files(entries: Sequence[str], dataset: str, settings: Sequence[str]) -> Dict[str, Path]:
    """setting -> label file: folders are searched for the community names of ``settings``;
    a file is its own setting ``file:<stem>``."""
    found: Dict[str, Path] = {}
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            for setting in settings:
                name = COMMUNITY_FILES.get(setting, "").format(dataset=dataset)
                if name and (path / name).is_file() and setting not in found:
                    found[setting] = path / name
        elif path.is_file():
            found[f"file:{path.stem}"] = path
        else:
            raise InputError(f"--noise-file {entry}: no such file or folder")
    return found


def noisy_labels(setting: str, files: Dict[str, Path], data: ExperimentData, protocol: Any,
                 seed: int) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The training labels of noise ``setting``: its label file (the first ``len(train)`` of a
    45,000-label CIFAR file, or exactly the training split's for digits) or, without one,
    :func:`inject_noise` with the protocol's eta model."""
    n = len(data.train)
    if setting == GIVEN:
        if data.given is None:
            raise InputError(f"noise setting {GIVEN!r} applies to a user dataset (--dataset DIR_OR_CSV)")
        return data.given.copy(), {"source": data.given_source}
    if setting in files:
        path = files[setting]
        total = 45000 if data.dataset in ("cifar10", "cifar100") else n
        labels = load_labels_file(path, num_samples=None, num_classes=data.num_classes)
        if len(labels) not in (total, n):
            raise InputError(f"{path}: {len(labels)} labels; expected {total} (or the {n} used)")
        labels = labels[:n]
        return labels, {"source": f"file {path.name}"}
    if setting.startswith("file:"):
        raise InputError(f"noise setting {setting!r} has no label file")
    if data.train.images is None and "pmd" in setting:
        raise InputError(f"noise setting {setting!r}: PMD noise trains a CNN on images in memory; on a user "
                         f"dataset use {GIVEN!r} or uniform / asymmetric noise on its clean labels (u-0.3, a-0.3)")
    eta = None if protocol.eta is None else dataclasses.replace(protocol.eta, seed=seed)
    labels, info = inject_noise(data.train.images, data.train.labels, parse_noise_spec(setting),
                                num_classes=data.num_classes, seed=seed, pmd_type=protocol.pmd_type,
                                model=protocol.eta_model, eta_config=eta)
    return labels, {"source": "generated", **info}

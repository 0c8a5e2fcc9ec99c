"""``synref bench``: the paper's table (methods x noise settings x seeds) with one command.

Methods (rows): ``standard`` (train on the noisy labels), ``ours`` (refine the labels with the
anchors, then fine-tune the Standard model on them), ``plc`` and ``plc+ours`` (PLC on the noisy /
refined labels), ``lra-<encoder>`` and ``lra-<encoder>+ours`` (LRA-diffusion conditioned on a
frozen encoder, :data:`synref.encoders.ENCODERS`). Noise settings (columns): ``pmd-0.35``,
``pmd-0.7``, ``pmd-0.35+u-0.3``, ``pmd-0.35+u-0.6``, ``pmd-0.35+a-0.3``, or label files.

Protocols (:func:`bench_protocol`):

- ``paper``: the paper's CIFAR settings (ResNet-34, 45,000 / 5,000 / 10,000, 200 + 50 epochs,
  PLC 180 epochs, LRA 200 epochs; the paper's refinement rule on the Standard model's
  features). For a GPU.
- ``cpu``: the same grid on the first 10,000 training images with a small CNN and short
  schedules, sized so that the whole CIFAR-10 grid with one seed runs in about an hour on
  2 CPU cores. Its refinement uses a pretrained encoder as the feature space (the paper's
  "CLIP image encoder as f" alternative; the small CNN's own features are too weak).
- ``digits``: scikit-learn's digits with ``synref demo``'s split, noise, glyph anchors and
  refinement (minutes).

Splits (CIFAR): train = the first 45,000 training images (or the protocol's subset), validation =
images 45,000-49,999 with clean labels (picks every method's best epoch), test = the 10,000 test
images. Anchors: ``--anchors DIR`` (an anchor set from ``synref generate``), else a **real-anchor
stand-in**: ``anchors_per_class`` validation images per class (drawn with seed 0), removed from
validation. Test images and the clean labels of training images are never used.

Everything is resumable: each finished cell is written at once to ``OUT/cells/<cell>.json``
and ``OUT/results.csv`` / ``OUT/results.md`` are rebuilt from the cells; the expensive shared
steps (noisy labels, the Standard model, refined labels, encoder features) are cached under
``OUT/work/``. A re-run skips finished cells.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import ConfigMixin
from .data import LabeledImages, load_cifar, load_digits_dataset, load_labels_file, split_indices
from .errors import InputError
from .io import write_json, write_npy, write_text
from .progress import progress as progress_bar
from .refine import DEFAULT_ALPHA, DEFAULT_THRESHOLD
from .ssl import SSLConfig
from .train import LRAConfig, PLCConfig, TrainConfig

__all__ = ["NOISE_SETTINGS", "BASE_METHODS", "PROTOCOLS", "RESULT_COLUMNS", "BenchProtocol", "BenchData",
           "bench_protocol", "parse_methods", "parse_noise_settings", "load_bench_data", "run_bench",
           "format_results_md", "PUBLISHED_CIFAR10"]

NOISE_SETTINGS: Tuple[str, ...] = ("pmd-0.35", "pmd-0.7", "pmd-0.35+u-0.3", "pmd-0.35+u-0.6", "pmd-0.35+a-0.3")
BASE_METHODS: Tuple[str, ...] = ("standard", "ours", "plc", "plc+ours")
PROTOCOLS: Tuple[str, ...] = ("paper", "cpu", "digits")
DATASETS: Tuple[str, ...] = ("cifar10", "cifar100", "digits")
RESULT_COLUMNS: Tuple[str, ...] = ("dataset", "protocol", "method", "noise", "seed", "test_acc", "label_acc",
                                   "seconds", "noise_rate", "val_acc", "best_epoch", "refine_seconds", "anchors")
#: community label files (first 45,000 CIFAR training images) per noise setting.
COMMUNITY_FILES: Dict[str, str] = {
    "pmd-0.35": "{dataset}-1-0.35.npy", "pmd-0.7": "{dataset}-1-0.70.npy",
    "pmd-0.35+u-0.3": "{dataset}-1-0.35_U_0.3.npy", "pmd-0.35+u-0.6": "{dataset}-1-0.35_U_0.6.npy",
    "pmd-0.35+a-0.3": "{dataset}-1-0.35_A_0.3.npy",
}
#: the paper's CIFAR-10 test accuracies (%) (../docs/method.md section 5), for the gain column.
PUBLISHED_CIFAR10: Dict[str, Tuple[float, ...]] = {
    "standard": (80.81, 40.32, 77.12, 67.92, 77.40),
    "ours": (82.46, 54.10, 79.76, 72.38, 78.97),
    "plc": (82.87, 38.65, 77.98, 61.87, 78.52),
    "plc+ours": (83.26, 54.01, 81.38, 72.57, 80.49),
    "lra-simclr": (89.29, 40.87, 88.83, 83.67, 86.89),
    "lra-simclr+ours": (88.87, 60.78, 88.41, 85.31, 87.95),
    "lra-clip": (96.91, 41.78, 96.61, 88.66, 94.35),
    "lra-clip+ours": (96.93, 71.59, 96.68, 94.94, 96.78),
}
REFINE_MODES = ("paper", "synref")


# ------------------------------------------------------------------------------ protocol
@dataclass
class BenchProtocol(ConfigMixin):
    """Everything a protocol fixes (recorded in ``OUT/bench-<dataset>-<protocol>.json``).

    Attributes:
        name: protocol name. model: the classifier of standard / ours / PLC.
        train_size: first N training images (CIFAR; None = all 45,000). test_size: first N test
            images (None = all).
        standard, finetune: training recipes of Standard and of the fine-tuning on refined labels.
        plc, lra: the robust trainers' recipes.
        refine: ``paper`` (the paper's rule: Standard model's softmax + cosine to the anchor
            prototypes in its own penultimate features, one pass) or ``synref`` (synref's preset:
            anchor-calibrated similarity + cross-fitted softmax, ``refine_rounds`` rounds).
        refine_encoder: ``synref``'s fixed feature space: an encoder name (features cached), or
            None for a SimCLR encoder trained on the training images + anchors.
        refine_head: ``network`` (a ``model`` per fold, ``standard``'s recipe) or ``linear`` (a
            linear softmax head per fold on the fixed features).
        refine_folds, refine_rounds: the cross-fitting. alpha, threshold: the score rule.
        encoders: the ``lra-<encoder>`` rows run by default. encoder_size: input side of
            pretrained CNN encoders. ssl, ssl_model: the SimCLR encoder's recipe.
        eta_model, eta: network / recipe of the clean-label model whose softmax drives
            generated PMD noise (None: :func:`synref.pipeline.inject_noise`'s default).
        anchors_per_class: stand-in anchors (CIFAR) or glyph anchors (digits) per class.
    """

    config_name = "bench protocol"

    name: str = "cpu"
    model: str = "small_cnn"
    train_size: Optional[int] = 10000
    test_size: Optional[int] = None
    standard: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=TrainConfig.paper_finetune)
    plc: PLCConfig = field(default_factory=PLCConfig.paper)
    lra: LRAConfig = field(default_factory=LRAConfig.paper)
    refine: str = "synref"
    refine_encoder: Optional[str] = "efficientnet-lite0"
    refine_head: str = "linear"
    refine_folds: int = 4
    refine_rounds: int = 3
    alpha: float = DEFAULT_ALPHA
    threshold: float = DEFAULT_THRESHOLD
    encoders: Tuple[str, ...] = ("simclr", "efficientnet-lite0")
    encoder_size: int = 224
    ssl: SSLConfig = field(default_factory=SSLConfig)
    ssl_model: str = "small_cnn"
    eta_model: str = "small_cnn"
    eta: Optional[TrainConfig] = None
    anchors_per_class: int = 100

    def __post_init__(self) -> None:
        for name, cls in (("standard", TrainConfig), ("finetune", TrainConfig), ("plc", PLCConfig),
                          ("lra", LRAConfig), ("ssl", SSLConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls.from_dict(getattr(self, name)))
        if isinstance(self.eta, dict):
            self.eta = TrainConfig.from_dict(self.eta)
        self.encoders = tuple(self.encoders)
        if self.refine_head not in ("network", "linear"):
            raise InputError(f"bench protocol: refine_head must be network or linear, got {self.refine_head!r}")
        if self.refine not in REFINE_MODES:
            raise InputError(f"bench protocol: refine must be one of {', '.join(REFINE_MODES)}, got {self.refine!r}")


def _cpu_cifar_schedule(epochs: int, lr: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=128, lr=lr, momentum=0.9, weight_decay=5e-4,
                       milestones=[int(round(epochs * 0.55)), int(round(epochs * 0.8))], gamma=0.1,
                       warmup_epochs=1, hflip=True)


def bench_protocol(name: str, dataset: str) -> BenchProtocol:
    """The protocol ``name`` (paper, cpu, digits) for ``dataset`` (cifar10, cifar100, digits)."""
    if name not in PROTOCOLS:
        raise InputError(f"unknown --protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}")
    if dataset not in DATASETS:
        raise InputError(f"unknown --dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    if (name == "digits") != (dataset == "digits"):
        raise InputError(f"--protocol {name} does not apply to --dataset {dataset}: use --protocol digits with "
                         f"--dataset digits, and --protocol paper or cpu with CIFAR")
    if name == "paper":
        return BenchProtocol(
            name="paper", model="resnet34", train_size=None, test_size=None,
            standard=TrainConfig.paper_standard(), finetune=TrainConfig.paper_finetune(),
            plc=PLCConfig.paper(), lra=LRAConfig.paper(), refine="paper", refine_encoder=None,
            encoders=("simclr", "clip"), encoder_size=224,
            ssl=SSLConfig(epochs=200, batch_size=512, hflip=True), ssl_model="resnet18",
            eta_model="preact_resnet34",
            eta=TrainConfig(epochs=25, batch_size=128, lr=1e-3, milestones=[], warmup_epochs=0, hflip=True),
            anchors_per_class=100)
    if name == "cpu":
        standard = _cpu_cifar_schedule(15, 0.05)
        plc_train = dataclasses.replace(_cpu_cifar_schedule(15, 0.05), nesterov=True)
        return BenchProtocol(
            name="cpu", model="small_cnn", train_size=10000, test_size=None,
            standard=standard,
            # the paper's fine-tuning (re-initialised head, lr x0.1 twice) at lr 1e-2 for 10 epochs
            finetune=TrainConfig(epochs=10, batch_size=128, lr=0.01, momentum=0.9, weight_decay=1e-4,
                                 milestones=[5, 8], gamma=0.1, warmup_epochs=0, hflip=True),
            plc=PLCConfig(train=plc_train, warmup_epochs=5, window=5, delta_start=0.3, delta_step=0.1,
                          delta_max=0.9, min_change_fraction=0.001),
            # LRA as the paper but 50 epochs (200 take ~4 min per cell here), cosine over those 50
            lra=dataclasses.replace(LRAConfig.paper(), epochs=50, cosine_epochs=None), refine="synref", refine_encoder="efficientnet-lite0", refine_head="linear",
            refine_rounds=5,
            encoders=("simclr", "efficientnet-lite0"), encoder_size=160,
            ssl=SSLConfig(epochs=20, batch_size=256, hflip=True), ssl_model="small_cnn",
            eta_model="small_cnn", eta=None, anchors_per_class=100)
    from .pipeline import DemoConfig

    demo = DemoConfig()
    return BenchProtocol(
        name="digits", model=demo.model, train_size=None, test_size=None,
        standard=demo.standard, finetune=demo.synref_finetune,
        plc=PLCConfig(train=dataclasses.replace(demo.standard, nesterov=True), warmup_epochs=8, window=5),
        lra=dataclasses.replace(LRAConfig.paper(), batch_size=100), refine="synref", refine_encoder=None,
        refine_head="network", refine_rounds=demo.synref.rounds,
        encoders=("simclr", "efficientnet-lite0"), encoder_size=64,
        ssl=demo.synref.ssl, ssl_model=demo.model, eta_model=demo.model, eta=None,
        anchors_per_class=demo.anchors_per_class)


def parse_noise_settings(text: Optional[str]) -> List[str]:
    """``"pmd-0.35,pmd-0.7"`` -> settings (None: all five of the paper)."""
    from .pipeline import format_noise_spec, parse_noise_spec

    if text is None:
        return list(NOISE_SETTINGS)
    settings = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        setting = format_noise_spec(parse_noise_spec(part))
        if setting not in settings:
            settings.append(setting)
    if not settings:
        raise InputError("--noise: no noise setting given")
    return settings


def parse_methods(text: Optional[str], encoders: Sequence[str]) -> List[str]:
    """``"standard,ours,lra-simclr"`` -> methods in table order (None: the protocol's default rows)."""
    from .encoders import ENCODERS

    default = list(BASE_METHODS) + [m for e in encoders for m in (f"lra-{e}", f"lra-{e}+ours")]
    if text is None:
        return default
    chosen = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not chosen:
        raise InputError("--methods: no method given")
    for method in chosen:
        if method in BASE_METHODS:
            continue
        base = method[:-len("+ours")] if method.endswith("+ours") else method
        if not base.startswith("lra-") or base[4:] not in ENCODERS:
            raise InputError(f"unknown method {method!r} in --methods; choose from standard, ours, plc, plc+ours, "
                             f"lra-<encoder>[+ours] with encoder one of: {', '.join(ENCODERS.names())}")
    order = {m: i for i, m in enumerate(default)}
    return sorted(dict.fromkeys(chosen), key=lambda m: (order.get(m, len(order)), m))


def method_base(method: str) -> Optional[str]:
    """The row a ``+ ours`` method is compared with (``ours`` -> ``standard``); None otherwise."""
    if method == "ours":
        return "standard"
    if method.endswith("+ours"):
        return method[:-len("+ours")]
    return None


# ---------------------------------------------------------------------------------- data
@dataclass
class BenchData:
    """One dataset's splits for the bench (uint8 images (N, H, W, C), int64 labels (N,))."""

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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _stand_in_anchors(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    picks = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class + 1:
            raise InputError(f"validation split has {len(pool)} images of class {c}; the real-anchor stand-in "
                             f"needs more than {per_class}")
        picks.append(np.sort(rng.choice(pool, per_class, replace=False)))
    return np.concatenate(picks)


def load_bench_data(dataset: str, protocol: BenchProtocol, *, data: Optional[str] = None,
                    anchors: Optional[str] = None, seed: int = 0, progress: bool = True) -> BenchData:
    """Splits and anchors for ``dataset`` (see the module docstring)."""
    if dataset == "digits":
        from .pipeline import DemoConfig, make_glyph_anchors

        demo = DemoConfig()
        digits = load_digits_dataset()
        tr, va, te = split_indices(digits.labels, fractions=(1 - demo.test_fraction - demo.val_fraction,
                                                             demo.val_fraction, demo.test_fraction), seed=seed)
        train, val, test = digits.subset(tr), digits.subset(va), digits.subset(te)
        if anchors:
            from .workflow import load_matched_anchors

            anchor_set, _ = load_matched_anchors(Path(anchors), digits.class_names, size=train.images.shape[1:3],
                                                 channels=train.images.shape[-1])
            source = f"anchor set {anchors}"
        else:
            anchor_set = make_glyph_anchors(digits.class_names, protocol.anchors_per_class,
                                            size=train.images.shape[1:3], channels=train.images.shape[-1],
                                            seed=seed, progress=progress)
            source = f"glyph (procedural synthetic), {protocol.anchors_per_class} per class"
        return BenchData("digits", list(digits.class_names), train, val, test, anchor_set, source,
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
        raise InputError(f"bench protocol: train_size must be in [1, 45000], got {n_train}")
    train = full.subset(np.arange(n_train))
    val_idx = np.arange(45000, 50000)
    if anchors:
        from .workflow import load_matched_anchors

        anchor_set, _ = load_matched_anchors(Path(anchors), full.class_names, size=full.images.shape[1:3],
                                             channels=full.images.shape[-1])
        source = f"anchor set {anchors} ({len(anchor_set)} images)"
        val = full.subset(val_idx)
    else:
        pick = _stand_in_anchors(full.labels[val_idx], protocol.anchors_per_class, full.num_classes)
        anchor_set = full.subset(val_idx[pick])
        val = full.subset(np.setdiff1d(val_idx, val_idx[pick]))
        source = (f"real-anchor stand-in: {protocol.anchors_per_class} clean validation images per class "
                  f"(from 45000-49999, removed from validation)")
    if protocol.test_size is not None:
        test = test.subset(np.arange(min(int(protocol.test_size), len(test))))
    return BenchData(dataset, list(full.class_names), train, val, test, anchor_set, source,
                     key=f"{dataset}-train{n_train}-test{len(test)}")


# ------------------------------------------------------------------------------ noise
def _noise_files(noise_files: Sequence[str], dataset: str, settings: Sequence[str]) -> Dict[str, Path]:
    """setting -> label file: folders are searched for the community names of ``settings``;
    a file is its own setting ``file:<stem>``."""
    found: Dict[str, Path] = {}
    for entry in noise_files:
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


def _noisy_labels(setting: str, files: Dict[str, Path], data: BenchData, protocol: BenchProtocol, seed: int,
                  progress: bool) -> Tuple[np.ndarray, Dict[str, Any]]:
    n = len(data.train)
    if setting in files:
        path = files[setting]
        total = 45000 if data.dataset != "digits" else n
        labels = load_labels_file(path, num_samples=None, num_classes=data.num_classes)
        if len(labels) not in (total, n):
            raise InputError(f"{path}: {len(labels)} labels; expected {total} (or the {n} used)")
        labels = labels[:n]
        return labels, {"source": f"file {path.name}"}
    if setting.startswith("file:"):
        raise InputError(f"noise setting {setting!r} has no label file")
    from .pipeline import inject_noise, parse_noise_spec

    eta = None if protocol.eta is None else dataclasses.replace(protocol.eta, seed=seed)
    labels, info = inject_noise(data.train.images, data.train.labels, parse_noise_spec(setting),
                                num_classes=data.num_classes, seed=seed, model=protocol.eta_model, eta_config=eta,
                                progress=progress)
    return labels, {"source": "generated", **info}


# ------------------------------------------------------------------------------ results
def _cell_name(dataset: str, protocol: str, method: str, noise: str, seed: int) -> str:
    safe = lambda s: "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in s)  # noqa: E731
    return f"{dataset}__{protocol}__{safe(method)}__{safe(noise)}__seed{seed}"


def read_cells(out: Path) -> List[Dict[str, Any]]:
    """Every finished cell of ``out`` (rows with :data:`RESULT_COLUMNS`)."""
    rows = []
    for path in sorted((Path(out) / "cells").glob("*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable cell result ({exc}); delete it to recompute the cell") from None
    return rows


def write_results(out: Path, rows: Sequence[Dict[str, Any]], notes: Dict[Tuple[str, str], Dict[str, Any]]) -> None:
    """``out/results.csv`` (one row per cell) and ``out/results.md`` (one table per dataset + protocol)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    order = {m: i for i, m in enumerate(BASE_METHODS)}
    for row in sorted(rows, key=lambda r: (r["dataset"], r["protocol"], r["noise"], order.get(r["method"], 9),
                                           r["method"], r["seed"])):
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in RESULT_COLUMNS})
    write_text(out / "results.csv", buf.getvalue())
    parts = []
    for key in sorted({(r["dataset"], r["protocol"]) for r in rows}):
        parts.append(format_results_md([r for r in rows if (r["dataset"], r["protocol"]) == key],
                                       notes.get(key, {})))
    write_text(out / "results.md", "\n\n".join(parts) + "\n")


def _noise_title(setting: str) -> str:
    if setting.startswith("file:"):
        return setting[5:]
    names = {"pmd": "PMD", "u": "U", "a": "A"}
    parts = []
    for part in setting.split("+"):
        kind, _, rate = part.partition("-")
        parts.append(f"{float(rate) * 100:g}% {names.get(kind, kind)}")
    return " + ".join(parts)


def _method_title(method: str) -> str:
    titles = {"standard": "Standard", "ours": "Ours (re-labeled)", "plc": "PLC", "plc+ours": "PLC + Ours"}
    if method in titles:
        return titles[method]
    base = method_base(method) or method
    encoder = base[4:]
    pretty = {"simclr": "SimCLR", "clip": "CLIP", "efficientnet-lite0": "EfficientNet-Lite0"}.get(encoder, encoder)
    return f"LRA ({pretty})" + (" + Ours" if method.endswith("+ours") else "")


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = 100 * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * float(np.std(values, ddof=1)):.2f}"


def format_results_md(rows: Sequence[Dict[str, Any]], note: Dict[str, Any]) -> str:
    """One paper-layout table (methods x noise settings, test accuracy %, mean ± std over seeds;
    a "+ Ours" cell adds its gain over its base row) plus label accuracies and wall times."""
    dataset, protocol = rows[0]["dataset"], rows[0]["protocol"]
    noises = [n for n in NOISE_SETTINGS if any(r["noise"] == n for r in rows)]
    noises += sorted({r["noise"] for r in rows} - set(noises))
    present = {r["method"] for r in rows}
    encoders = sorted({(method_base(m) or m)[4:] for m in present if m.startswith("lra-")},
                      key=lambda e: (["simclr", "clip"].index(e) if e in ("simclr", "clip") else 2, e))
    methods = parse_methods(",".join(sorted(present)), encoders)
    seeds = sorted({int(r["seed"]) for r in rows})

    def values(method: str, noise: str, key: str = "test_acc") -> Dict[int, float]:
        return {int(r["seed"]): float(r[key]) for r in rows
                if r["method"] == method and r["noise"] == noise and r.get(key) not in (None, "")}

    lines = [f"## {dataset}, protocol `{protocol}`", ""]
    lines.append(f"Test accuracy (%) of the best clean-validation epoch; mean ± std over seeds "
                 f"{', '.join(map(str, seeds))}; a \"+ Ours\" cell gives (in brackets) its gain over the row it "
                 f"refines.")
    for key in ("anchors", "data", "refinement", "encoders"):
        if note.get(key):
            lines.append(f"- {key}: {note[key]}")
    lines += ["", "| Method | " + " | ".join(_noise_title(n) for n in noises) + " |",
              "|---|" + "---:|" * len(noises)]
    for method in methods:
        cells = []
        for noise in noises:
            v = values(method, noise)
            text = _mean_std(list(v.values()))
            base = method_base(method)
            if base and v:
                b = values(base, noise)
                common = sorted(set(v) & set(b))
                if common:
                    gain = 100 * float(np.mean([v[s] - b[s] for s in common]))
                    text += f" ({gain:+.2f})"
            cells.append(text)
        lines.append(f"| {_method_title(method)} | " + " | ".join(cells) + " |")

    if dataset == "cifar10" and any(m in PUBLISHED_CIFAR10 for m in methods):
        lines += ["", "Published gains of \"+ Ours\" (ResNet-34, CIFAR-10, paper protocol), for comparison:", "",
                  "| Method | " + " | ".join(_noise_title(n) for n in noises) + " |",
                  "|---|" + "---:|" * len(noises)]
        for method in methods:
            base = method_base(method)
            if not base or method not in PUBLISHED_CIFAR10:
                continue
            cells = []
            for noise in noises:
                if noise in NOISE_SETTINGS:
                    i = NOISE_SETTINGS.index(noise)
                    cells.append(f"{PUBLISHED_CIFAR10[method][i] - PUBLISHED_CIFAR10[base][i]:+.2f}")
                else:
                    cells.append("-")
            lines.append(f"| {_method_title(method)} | " + " | ".join(cells) + " |")

    lines += ["", "Accuracy (%) of the training labels each method starts from (vs the clean labels):", "",
              "| Labels | " + " | ".join(_noise_title(n) for n in noises) + " |", "|---|" + "---:|" * len(noises)]
    for title, method in (("noisy (given)", "standard"), ("refined (ours)", "ours")):
        src = method if method in present else next((m for m in methods if (method_base(m) is None) ==
                                                     (method == "standard")), None)
        if src is None:
            continue
        lines.append(f"| {title} | " + " | ".join(_mean_std(list(values(src, n, "label_acc").values()))
                                                  for n in noises) + " |")

    lines += ["", "Wall time (s) per cell, mean over seeds (a \"+ Ours\" cell excludes the shared refinement, "
              "listed separately):", "", "| Method | " + " | ".join(_noise_title(n) for n in noises) + " |",
              "|---|" + "---:|" * len(noises)]
    for method in methods:
        lines.append(f"| {_method_title(method)} | " + " | ".join(
            (f"{np.mean(list(values(method, n, 'seconds').values())):.0f}" if values(method, n, 'seconds') else "-")
            for n in noises) + " |")
    refine = {n: [float(r["refine_seconds"]) for r in rows if r["noise"] == n and r.get("refine_seconds")
                  not in (None, "") and r["method"] == "ours"] for n in noises}
    if any(refine.values()):
        lines.append("| refinement | " + " | ".join(f"{np.mean(refine[n]):.0f}" if refine[n] else "-"
                                                    for n in noises) + " |")
    total = sum(float(r["seconds"]) for r in rows) + sum(sum(v) for v in refine.values())
    lines += ["", f"Total of the cells' and refinements' wall times: {total / 60:.1f} min "
                  f"(plus shared encoder features: {note.get('encoder_seconds', 0) / 60:.1f} min)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- runner
class _NoiseRun:
    """The shared, cached steps of one (noise setting, seed): noisy labels, the Standard model,
    the refined labels."""

    def __init__(self, bench: "_Bench", noise: str, seed: int) -> None:
        self.bench, self.noise, self.seed = bench, noise, seed
        safe = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in noise)
        self.dir = bench.work / f"seed{seed}" / safe
        self._noisy: Optional[np.ndarray] = None
        self._noise_info: Dict[str, Any] = {}
        self._standard = None
        self._refined: Optional[np.ndarray] = None
        self.refine_seconds: Optional[float] = None

    def noisy(self) -> np.ndarray:
        if self._noisy is None:
            path, meta = self.dir / "noisy.npy", self.dir / "noisy.json"
            if path.is_file() and meta.is_file():
                self._noisy = np.load(path)
                self._noise_info = json.loads(meta.read_text())
            else:
                b = self.bench
                self._noisy, self._noise_info = _noisy_labels(self.noise, b.noise_files, b.data, b.protocol,
                                                              self.seed, b.progress)
                self._noise_info["noise_rate"] = float(np.mean(self._noisy != b.data.train.labels))
                write_npy(path, self._noisy)
                write_json(meta, self._noise_info)
        return self._noisy

    @property
    def noise_rate(self) -> float:
        self.noisy()
        return float(self._noise_info["noise_rate"])

    def standard_model(self):
        """The Standard model (trained by the ``standard`` cell, or now; cached)."""
        from .features import load_classifier

        if self._standard is None:
            path = self.dir / "standard.pt"
            if path.is_file():
                self._standard = load_classifier(path)
            else:
                self.bench.run_cell("standard", self)
                assert self._standard is not None
        return self._standard

    def set_standard(self, model) -> None:
        from .features import save_classifier

        save_classifier(model, self.dir / "standard.pt", name=self.bench.protocol.model)
        self._standard = model

    def refined(self) -> np.ndarray:
        if self._refined is None:
            path, meta = self.dir / "refined.npy", self.dir / "refined.json"
            if path.is_file() and meta.is_file():
                self._refined = np.load(path)
                self.refine_seconds = float(json.loads(meta.read_text())["seconds"])
            else:
                p = self.bench.protocol
                if p.refine == "synref" and p.refine_encoder is not None:
                    self.bench.features(p.refine_encoder, self.seed)  # shared encoder time, counted apart
                t0 = time.time()
                self._refined, info = self.bench.refine(self)
                self.refine_seconds = time.time() - t0
                info.update(seconds=self.refine_seconds,
                            label_acc=float(np.mean(self._refined == self.bench.data.train.labels)),
                            num_changed=int(np.sum(self._refined != self.noisy())))
                write_npy(path, self._refined)
                write_json(meta, info)
        return self._refined


class _Bench:
    def __init__(self, dataset: str, protocol: BenchProtocol, data: BenchData, out: Path,
                 noise_files: Dict[str, Path], *, device: Optional[str], clip_model: Optional[str],
                 progress: bool) -> None:
        self.dataset, self.protocol, self.data, self.out = dataset, protocol, data, out
        self.noise_files, self.device, self.clip_model, self.progress = noise_files, device, clip_model, progress
        self.work = out / "work" / f"{dataset}-{protocol.name}"
        self._features: Dict[Tuple[str, int], Dict[str, np.ndarray]] = {}

    # -- shared pieces ---------------------------------------------------------------------
    def _train_config(self, config: TrainConfig, seed: int) -> TrainConfig:
        return dataclasses.replace(config, seed=seed, device=self.device or config.device)

    def features(self, encoder: str, seed: int) -> Dict[str, np.ndarray]:
        """L2-normalised features of train / val / test / anchors in ``encoder``'s space (cached)."""
        from .encoders import create_encoder, encoder_features

        key = (encoder, seed)
        if key not in self._features:
            t0 = time.time()
            p = self.protocol
            ssl_config = dataclasses.replace(p.ssl, seed=seed)
            extractor = create_encoder(encoder, train_images=self.data.train.images, ssl_config=ssl_config,
                                       ssl_model=p.ssl_model, size=p.encoder_size, clip_model=self.clip_model,
                                       device=self.device)
            sets = {"train": self.data.train.images, "val": self.data.val.images, "test": self.data.test.images,
                    "anchors": self.data.anchors.images}
            cache = self.work / "features"
            self._features[key] = encoder_features(extractor, sets, cache_dir=cache,
                                                   key_prefix=self.data.key, progress=self.progress)
            timing = cache / f"{encoder}-seed{seed}.seconds.json"
            if not timing.is_file():  # the first (computing) run's wall time
                write_json(timing, {"encoder": encoder, "seed": seed, "seconds": round(time.time() - t0, 2)})
        return self._features[key]

    def refine(self, run: _NoiseRun) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Refined labels of ``run``'s noisy labels with the protocol's rule."""
        p, d = self.protocol, self.data
        noisy = run.noisy()
        info: Dict[str, Any] = {"rule": p.refine, "alpha": p.alpha, "threshold": p.threshold}
        if p.refine == "synref":
            from .presets import CrossFitRefineConfig, crossfit_refinement

            config = CrossFitRefineConfig(train=self._train_config(p.standard, run.seed), ssl=p.ssl, seed=run.seed,
                                          alpha=p.alpha, threshold=p.threshold, model=p.model, head=p.refine_head,
                                          folds=p.refine_folds, rounds=p.refine_rounds)
            fixed = None
            if p.refine_encoder is not None:
                feats = self.features(p.refine_encoder, run.seed)
                fixed = (feats["train"], feats["anchors"])
            result = crossfit_refinement(d.train.images, noisy, d.anchors.images, d.anchors.labels,
                                         num_classes=d.num_classes, config=config, val_images=d.val.images,
                                         val_labels=d.val.labels, class_names=d.class_names, fixed_features=fixed,
                                         true_labels=d.train.labels, progress=self.progress)
            info.update(encoder=p.refine_encoder or "simclr (trained on train + anchors)", head=p.refine_head,
                        rounds=result.info.get("rounds"), temperatures=result.info.get("temperatures"))
            return result.refined_labels, info
        from .presets import paper_refinement

        result = paper_refinement(run.standard_model(), d.train.images, noisy, d.anchors.images, d.anchors.labels,
                                  alpha=p.alpha, threshold=p.threshold, class_names=d.class_names)
        return result.refined_labels, info

    # -- cells -------------------------------------------------------------------------------
    def cell_path(self, method: str, noise: str, seed: int) -> Path:
        return self.out / "cells" / f"{_cell_name(self.dataset, self.protocol.name, method, noise, seed)}.json"

    def run_cell(self, method: str, run: _NoiseRun) -> Dict[str, Any]:
        from .models import create_model
        from .train import evaluate_accuracy, fine_tune, fit, predict_lra, train_lra, train_plc

        p, d, seed = self.protocol, self.data, run.seed
        truth = d.train.labels
        base = method_base(method)
        labels = run.refined() if base is not None else run.noisy()
        t0 = time.time()
        row: Dict[str, Any] = {"dataset": self.dataset, "protocol": p.name, "method": method, "noise": run.noise,
                               "seed": seed, "label_acc": float(np.mean(labels == truth)),
                               "noise_rate": run.noise_rate, "anchors": d.anchor_source}
        if method == "standard":
            model = create_model(p.model, num_classes=d.num_classes, in_channels=d.train.images.shape[-1], seed=seed)
            res = fit(model, d.train.images, labels, val_images=d.val.images, val_labels=d.val.labels,
                      config=self._train_config(p.standard, seed), progress=self.progress, desc="standard")
            run.set_standard(res.model)
            test_acc = evaluate_accuracy(res.model, d.test.images, d.test.labels)
            row.update(val_acc=res.best_val_acc, best_epoch=res.best_epoch)
        elif method == "ours":
            standard = run.standard_model()
            t0 = time.time()  # the Standard model is the standard cell's cost
            res = fine_tune(standard, d.train.images, labels, val_images=d.val.images, val_labels=d.val.labels,
                            config=self._train_config(p.finetune, seed), progress=self.progress, desc="ours: fine-tune")
            test_acc = evaluate_accuracy(res.model, d.test.images, d.test.labels)
            row.update(val_acc=res.best_val_acc, best_epoch=res.best_epoch)
        elif method in ("plc", "plc+ours"):
            model = create_model(p.model, num_classes=d.num_classes, in_channels=d.train.images.shape[-1], seed=seed)
            config = dataclasses.replace(p.plc, train=self._train_config(p.plc.train, seed))
            res = train_plc(model, d.train.images, labels, val_images=d.val.images, val_labels=d.val.labels,
                            config=config, true_labels=truth, progress=self.progress, desc=method)
            test_acc = evaluate_accuracy(res.model, d.test.images, d.test.labels)
            row.update(val_acc=res.best_val_acc, best_epoch=res.best_epoch,
                       corrected_label_acc=float(np.mean(res.corrected_labels == truth)))
        else:
            encoder = (base or method)[4:]
            feats = self.features(encoder, seed)
            t0 = time.time()  # encoder features are shared by every cell (listed separately)
            config = dataclasses.replace(p.lra, seed=seed, device=self.device or p.lra.device)
            res = train_lra(feats["train"], labels, num_classes=d.num_classes, config=config,
                            val_features=feats["val"], val_labels=d.val.labels, progress=self.progress)
            test_acc = float(np.mean(predict_lra(res.model, feats["test"]) == d.test.labels))
            row.update(val_acc=res.best_val_acc, best_epoch=res.best_epoch)
        row["test_acc"] = float(test_acc)
        row["seconds"] = round(time.time() - t0, 2)
        row["refine_seconds"] = None if base is None else round(float(run.refine_seconds or 0.0), 2)
        write_json(self.cell_path(method, run.noise, seed), row)
        return row


def _check_protocol_record(out: Path, dataset: str, protocol: BenchProtocol, anchors: Optional[str],
                           data_note: Optional[Dict[str, Any]] = None) -> None:
    """Record the protocol in ``out/bench-<dataset>-<protocol>.json``; refuse a different one there."""
    path = out / f"bench-{dataset}-{protocol.name}.json"
    record = {"dataset": dataset, "protocol": protocol.to_dict(), "anchors_option": anchors}
    old: Dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        changed = [k for k in record if k in old and old[k] != record[k]]
        if changed:
            what = {"protocol": "protocol", "anchors_option": "--anchors", "dataset": "dataset"}
            raise InputError(f"--out {out} holds a {dataset} / {protocol.name} bench run with a different "
                             f"{' and '.join(what[k] for k in changed)}; use another --out (or delete "
                             f"{path.name} and {out / 'cells'})")
    write_json(path, {**old, **record, **(data_note or {})})


def run_bench(*, dataset: str = "digits", protocol: str = "digits", out: Path, data: Optional[str] = None,
              methods: Optional[str] = None, noise: Optional[str] = None, seeds: Sequence[int] = (0,),
              noise_files: Sequence[str] = (), anchors: Optional[str] = None, device: Optional[str] = None,
              clip_model: Optional[str] = None, protocol_overrides: Optional[Callable[[BenchProtocol], None]] = None,
              progress: bool = True) -> List[Dict[str, Any]]:
    """Run (or resume) the grid; returns every finished row of this dataset + protocol and writes
    ``out/results.csv`` / ``out/results.md``. ``protocol_overrides`` may edit the protocol (tests)."""
    from .pipeline import check_output_dir

    out = Path(out)
    check_output_dir(out)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    proto = bench_protocol(protocol, dataset)
    if protocol_overrides is not None:
        protocol_overrides(proto)
    method_list = parse_methods(methods, proto.encoders)
    settings = parse_noise_settings(noise) if (noise is not None or not noise_files) else []
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("--seeds: no seed given")
    if dataset != "digits" and not data:
        raise InputError(f"--dataset {dataset} needs --data DIR (the official CIFAR python layout)")
    files = _noise_files(noise_files, dataset, settings or NOISE_SETTINGS)
    if not settings:  # only label files given: their settings are the columns
        settings = [s for s in NOISE_SETTINGS if s in files] + sorted(s for s in files if s.startswith("file:"))
    else:
        settings += sorted(s for s in files if s.startswith("file:"))
    out.mkdir(parents=True, exist_ok=True)
    _check_protocol_record(out, dataset, proto, anchors)

    grid = [(seed, n, m) for seed in seeds for n in settings for m in method_list]
    todo = [(seed, n, m) for seed, n, m in grid if not _cell_done(out, dataset, proto.name, m, n, seed)]
    bar = progress_bar(total=len(grid), desc=f"bench {dataset}/{proto.name}", unit="cell",
                       enabled=None if progress else False)
    bar.update(len(grid) - len(todo))
    bench: Optional[_Bench] = None
    runs: Dict[str, _NoiseRun] = {}
    runs_seed: Optional[int] = None
    try:
        for seed, setting, method in todo:  # seed-major: the data (digits: its split) is loaded once per seed
            if bench is None or runs_seed != seed:
                d = load_bench_data(dataset, proto, data=data, anchors=anchors, seed=seed, progress=progress)
                _check_protocol_record(out, dataset, proto, anchors, _data_note(d, proto))
                bench = _Bench(dataset, proto, d, out, files, device=device, clip_model=clip_model,
                               progress=progress)
                runs, runs_seed = {}, seed
            if setting not in runs:
                runs[setting] = _NoiseRun(bench, setting, seed)
            bar.set_postfix_str(f"{method} / {setting} / seed {seed}")
            bench.run_cell(method, runs[setting])
            bar.update(1)
            _write_all(out)
    finally:
        bar.close()
    _write_all(out)
    return [r for r in read_cells(out) if r["dataset"] == dataset and r["protocol"] == proto.name]


def _cell_done(out: Path, dataset: str, protocol: str, method: str, noise: str, seed: int) -> bool:
    return (out / "cells" / f"{_cell_name(dataset, protocol, method, noise, seed)}.json").is_file()


def _data_note(d: BenchData, p: BenchProtocol) -> Dict[str, Any]:
    if p.refine == "paper":
        refinement = (f"the paper's rule: Standard model's softmax + cosine to the anchor prototypes in its "
                      f"penultimate features, alpha {p.alpha:g}, threshold {p.threshold:g}, one pass")
    else:
        space = (f"frozen {p.refine_encoder} features" + (f" ({p.encoder_size} px)" if p.refine_encoder !=
                                                           "simclr" else "")
                 if p.refine_encoder else "a SimCLR encoder trained on the training images + anchors")
        head = "a linear softmax head" if p.refine_head == "linear" else f"a {p.model}"
        refinement = (f"synref preset: anchor-calibrated cosine in {space} + {p.refine_folds}-fold cross-fitted "
                      f"softmax of {head}, alpha {p.alpha:g}, threshold {p.threshold:g}, {p.refine_rounds} rounds "
                      f"(round r trains on round r-1's labels, re-scores the given ones)")
    return {"anchors": d.anchor_source,
            "data": f"{len(d.train)} train (noisy) / {len(d.val)} val (clean) / {len(d.test)} test, "
                    f"model {p.model}",
            "refinement": refinement,
            "encoders": f"LRA conditioning encoders at {p.encoder_size} px (pretrained CNNs), SimCLR "
                        f"{p.ssl_model} {p.ssl.epochs} epochs"}


def _write_all(out: Path) -> None:
    rows = read_cells(out)
    if not rows:
        return
    notes: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for path in out.glob("bench-*.json"):
        record = json.loads(path.read_text())
        seconds = [json.loads(p.read_text())["seconds"]
                   for p in (out / "work" / f"{record['dataset']}-{record['protocol']['name']}").glob(
                       "features/*.seconds.json")]
        notes[(record["dataset"], record["protocol"]["name"])] = {**record, "encoder_seconds": sum(seconds)}
    write_results(out, rows, notes)


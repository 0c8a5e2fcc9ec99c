"""End-to-end runs: label-noise specs, PMD from a clean model, and the built-in demo.

The demo (``synref demo``) on scikit-learn's digits:
clean test split held out -> noise injected into the training labels -> "Standard" trained on
the noisy labels (a small clean validation split picks the best epoch, as in the paper) ->
synthetic glyph anchors rendered -> refinement by each preset -> fine-tuning on the refined
labels -> test accuracy and label accuracy, as a table and ``OUT/metrics.json``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import noise as noise_models
from .data import LabeledImages, load_digits_dataset, load_labels_file, split_indices
from .errors import InputError
from .io import write_json, write_npy
from .models import create_model
from .presets import CrossFitRefineConfig, crossfit_refinement, paper_refinement
from .progress import progress as progress_bar
from .refine import relabel_metrics
from .train import TrainConfig, evaluate_accuracy, fine_tune, fit, predict_proba

NOISE_KINDS = ("pmd", "uniform", "asymmetric")
_SHORT_KINDS = {"pmd": "pmd", "u": "uniform", "uniform": "uniform", "a": "asymmetric", "asymmetric": "asymmetric"}


# ----------------------------------------------------------------------------- noise specs
def parse_noise_spec(spec: str, rate: Optional[float] = None) -> List[Tuple[str, float]]:
    """Parse a noise setting into ``[(kind, rate), ...]`` applied in order.

    ``"pmd"`` with ``rate=0.7`` -> ``[("pmd", 0.7)]``; ``"pmd-0.35+u-0.3"`` ->
    ``[("pmd", 0.35), ("uniform", 0.3)]``; kinds: pmd, uniform (u), asymmetric (a).
    """
    spec = str(spec).strip().lower()
    if not spec:
        raise InputError("empty noise setting")
    steps: List[Tuple[str, float]] = []
    for part in spec.split("+"):
        m = re.fullmatch(r"([a-z]+)(?:-([0-9.]+))?", part.strip())
        if not m or m.group(1) not in _SHORT_KINDS:
            raise InputError(f"unknown noise kind {part!r} in {spec!r}; use pmd, uniform (u) or asymmetric (a), "
                             f"e.g. 'pmd-0.35+u-0.3'")
        kind = _SHORT_KINDS[m.group(1)]
        if m.group(2) is not None:
            try:
                value = float(m.group(2))
            except ValueError:
                raise InputError(f"bad rate {m.group(2)!r} in noise setting {spec!r}") from None
        elif rate is not None and len(spec.split("+")) == 1:
            value = float(rate)
        else:
            raise InputError(f"noise setting {spec!r} needs a rate, e.g. '{kind}-0.3'")
        if not 0.0 <= value <= 1.0:
            raise InputError(f"noise rate must be in [0, 1], got {value} in {spec!r}")
        steps.append((kind, value))
    if any(kind == "pmd" for kind, _ in steps[1:]):
        raise InputError(f"PMD must come first in a hybrid noise setting, got {spec!r}")
    return steps


def format_noise_spec(steps: Sequence[Tuple[str, float]]) -> str:
    short = {"pmd": "pmd", "uniform": "u", "asymmetric": "a"}
    return "+".join(f"{short[k]}-{r:g}" for k, r in steps)


def inject_noise(images: np.ndarray, labels: np.ndarray, steps: Sequence[Tuple[str, float]], *,
                 num_classes: int, seed: int, pmd_type: int = 1, model: str = "small_cnn",
                 eta_config: Optional[TrainConfig] = None, class_map: Optional[Dict[int, int]] = None,
                 progress: bool = True) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Apply noise ``steps`` to clean ``labels`` (N,). PMD trains a model on the clean labels
    for eta (the method's noise model: weakly trained, so margins vary) and calibrates the factor.

    Returns the noisy labels (N,) and a dict describing what was done (factor, rates).
    """
    info: Dict[str, Any] = {"setting": format_noise_spec(steps), "steps": []}
    current = np.asarray(labels, dtype=np.int64).copy()
    for kind, rate in steps:
        if kind == "pmd":
            cfg = eta_config or TrainConfig(epochs=8, lr=0.01, batch_size=64, milestones=[], warmup_epochs=0,
                                            seed=seed)
            eta_model = fit(create_model(model, num_classes=num_classes, in_channels=images.shape[-1], seed=seed),
                            images, current, config=cfg, progress=progress, desc="PMD eta model").model
            eta = predict_proba(eta_model, images)
            factor = noise_models.calibrate_pmd_factor(eta, noise_type=pmd_type, target_rate=rate, labels=current)
            new = noise_models.pmd_noise(eta, noise_type=pmd_type, factor=factor, seed=seed)
            step = {"kind": "pmd", "type": pmd_type, "target_rate": rate, "factor": factor,
                    "eta_train_acc": float(np.mean(eta.argmax(1) == current))}
        else:
            new = noise_models.hybrid_noise(current, kind=kind, rate=rate, num_classes=num_classes, seed=seed,
                                            class_map=class_map if kind == "asymmetric" else None)
            step = {"kind": kind, "rate": rate}
        step["changed"] = float(np.mean(new != current))
        current = new
        info["steps"].append(step)
    info["noise_rate"] = float(np.mean(current != labels))
    return current, info


# ----------------------------------------------------------------------------- demo
def _digits_standard() -> TrainConfig:
    # The paper's recipe (SGD, momentum 0.9, wd 5e-4, multistep, 1 warm-up epoch, crop pad) scaled
    # to 1,200 8x8 images: 30 epochs, batch 64, lr 0.05, x0.1 at 15 and 25; no flips (digits).
    return TrainConfig(epochs=30, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                       milestones=[15, 25], gamma=0.1, warmup_epochs=1, hflip=False)


def _digits_paper_finetune() -> TrainConfig:
    # The paper's fine-tuning (lr 1e-3, wd 1e-4, 50 epochs, x0.1 at [20, 40]) scaled to 30 epochs.
    return TrainConfig.paper_finetune(epochs=30, milestones=[12, 24], batch_size=64, hflip=False)


def _digits_synref_finetune() -> TrainConfig:
    # synref's fine-tuning: lr 1e-2 (measured better than 1e-3 on digits: see README).
    return TrainConfig(epochs=30, batch_size=64, lr=0.01, momentum=0.9, weight_decay=1e-4,
                       milestones=[15, 25], gamma=0.1, warmup_epochs=0, hflip=False)


@dataclass
class DemoConfig:
    """Everything ``synref demo`` does, so a run can be repeated from its ``config.json``."""

    noise: str = "pmd"
    rate: float = 0.7
    noise_file: Optional[str] = None
    pmd_type: int = 1
    seed: int = 0
    presets: Tuple[str, ...] = ("paper", "synref")
    anchors_per_class: int = 100
    model: str = "small_cnn"
    test_fraction: float = 0.25
    val_fraction: float = 0.10
    standard: TrainConfig = field(default_factory=_digits_standard)
    paper_finetune: TrainConfig = field(default_factory=_digits_paper_finetune)
    synref_finetune: TrainConfig = field(default_factory=_digits_synref_finetune)
    synref: CrossFitRefineConfig = field(default_factory=lambda: CrossFitRefineConfig(train=_digits_standard()))

    def __post_init__(self) -> None:
        self.presets = tuple(self.presets)
        unknown = [p for p in self.presets if p not in ("paper", "synref")]
        if unknown or not self.presets:
            raise InputError(f"unknown preset {unknown[0] if unknown else ''!r}; choose paper or synref")
        if self.anchors_per_class < 1:
            raise InputError(f"--anchors-per-class must be at least 1, got {self.anchors_per_class}")
        self.noise_steps = parse_noise_spec(self.noise, self.rate)

    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("standard", "paper_finetune", "synref_finetune", "synref"):
            d[key] = d[key].to_dict()
        d["presets"] = list(self.presets)
        d["noise_setting"] = format_noise_spec(self.noise_steps)
        return d


def _seeded(config: TrainConfig, seed: int) -> TrainConfig:
    return dataclasses.replace(config, seed=seed)


def run_demo(config: Optional[DemoConfig] = None, *, out: Optional[Path] = None,
             progress: bool = True) -> Dict[str, Any]:
    """Run the demo; write ``out/metrics.json`` (and labels) if ``out`` is given. Returns the metrics.

    Top-level metric keys describe synref's default preset when it ran (else the paper's);
    ``presets`` holds both rows.
    """
    config = config or DemoConfig()
    if out is not None:
        check_output_dir(out)
    started = time.time()
    seed = config.seed
    steps = ["data", "noise", "standard", "anchors"] + [f"{p} refine + fine-tune" for p in config.presets]
    stage = progress_bar(total=len(steps), desc="demo", unit="step", enabled=None if progress else False)

    def advance(name: str) -> None:
        stage.set_postfix_str(name)
        stage.update(1)

    digits = load_digits_dataset()
    train_idx, val_idx, test_idx = split_indices(
        digits.labels, fractions=(1 - config.test_fraction - config.val_fraction, config.val_fraction,
                                  config.test_fraction), seed=seed)
    train, val, test = digits.subset(train_idx), digits.subset(val_idx), digits.subset(test_idx)
    num_classes = digits.num_classes
    advance("data")

    if config.noise_file is not None:
        noisy = load_labels_file(config.noise_file, num_samples=len(train), num_classes=num_classes)
        noise_info = {"setting": f"file {Path(config.noise_file).name}", "file": str(config.noise_file),
                      "noise_rate": float(np.mean(noisy != train.labels))}
    else:
        noisy, noise_info = inject_noise(train.images, train.labels, config.noise_steps, num_classes=num_classes,
                                         seed=seed, pmd_type=config.pmd_type, model=config.model,
                                         progress=progress)
    advance("noise")

    standard = fit(create_model(config.model, num_classes=num_classes, in_channels=train.images.shape[-1], seed=seed),
                   train.images, noisy, val_images=val.images, val_labels=val.labels,
                   config=_seeded(config.standard, seed), progress=progress, desc="Standard")
    standard_test_acc = evaluate_accuracy(standard.model, test.images, test.labels)
    advance("standard")

    anchors = make_glyph_anchors(digits.class_names, config.anchors_per_class, size=train.images.shape[1:3],
                                 channels=train.images.shape[-1], seed=seed, progress=progress)
    advance("anchors")

    rows: Dict[str, Dict[str, Any]] = {}
    for preset in config.presets:
        t0 = time.time()
        if preset == "paper":
            result = paper_refinement(standard.model, train.images, noisy, anchors.images, anchors.labels,
                                      class_names=digits.class_names)
            ft_config = config.paper_finetune
        else:
            synref_cfg = dataclasses.replace(config.synref, seed=seed, train=_seeded(config.synref.train, seed))
            result = crossfit_refinement(train.images, noisy, anchors.images, anchors.labels,
                                         num_classes=num_classes, config=synref_cfg, val_images=val.images,
                                         val_labels=val.labels, class_names=digits.class_names,
                                         true_labels=train.labels, progress=progress)
            ft_config = config.synref_finetune
        tuned = fine_tune(standard.model, train.images, result.refined_labels, val_images=val.images,
                          val_labels=val.labels, config=_seeded(ft_config, seed), progress=progress,
                          desc=f"fine-tune ({preset})")
        # Control: the same fine-tuning recipe on the unrefined noisy labels, so the table separates
        # what refinement adds from what the extra training adds.
        control = fine_tune(standard.model, train.images, noisy, val_images=val.images, val_labels=val.labels,
                            config=_seeded(ft_config, seed), progress=progress, desc=f"control ({preset})")
        row: Dict[str, Any] = relabel_metrics(noisy, result.refined_labels, train.labels)
        row.update(standard_test_acc=standard_test_acc,
                   refined_test_acc=evaluate_accuracy(tuned.model, test.images, test.labels),
                   control_test_acc=evaluate_accuracy(control.model, test.images, test.labels),
                   alpha=result.alpha, threshold=result.threshold, seconds=round(time.time() - t0, 2))
        if "rounds" in result.info:
            row["rounds"] = result.info["rounds"]
        rows[preset] = row
        rows[preset]["_refined_labels"] = result.refined_labels
        advance(f"{preset} done")
    stage.close()

    main = rows["synref" if "synref" in rows else "paper"]
    metrics: Dict[str, Any] = {
        "dataset": "digits (scikit-learn)",
        "noise": noise_info,
        "num_train": len(train), "num_val": len(val), "num_test": len(test),
        "anchors": {"generator": "glyph", "per_class": config.anchors_per_class},
        "main_preset": "synref" if "synref" in rows else "paper",
    }
    for key in ("noisy_label_acc", "refined_label_acc", "relabel_precision", "relabel_recall",
                "standard_test_acc", "refined_test_acc"):
        metrics[key] = main[key]
    metrics["presets"] = {name: {k: v for k, v in row.items() if not k.startswith("_")} for name, row in rows.items()}
    metrics["seconds"] = round(time.time() - started, 2)
    if out is not None:
        out = Path(out)
        write_npy(out / "noisy_labels.npy", noisy)
        write_npy(out / "true_labels.npy", train.labels)
        for name, row in rows.items():
            write_npy(out / f"refined_labels_{name}.npy", row["_refined_labels"])
        write_json(out / "config.json", config.to_dict())
        write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return metrics


def check_output_dir(out: Path) -> None:
    """Fail before any work if ``out`` cannot become a writable folder (nothing is created)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {probe} is not a writable folder")


def make_glyph_anchors(class_names: Sequence[str], per_class: int, *, size: Tuple[int, int], channels: int,
                       seed: int = 0, progress: bool = True) -> LabeledImages:
    """Procedural glyph anchors rendered at 32 px and brought to the dataset's size and channels."""
    from .anchors import create_generator, match_format

    generator = create_generator("glyph", size=32, channels=1)
    anchors = generator.generate(list(class_names), per_class, seed=seed, progress=progress)
    return match_format(anchors, size=tuple(size), channels=channels)


def format_demo_table(metrics: Dict[str, Any]) -> str:
    """A plain-text table of the demo's rows."""
    header = (f"{'row':<22}{'label acc':>10}{'changed':>9}{'precision':>11}{'recall':>8}{'test acc':>10}"
              f"{'control':>9}")
    lines = [f"digits, noise {metrics['noise']['setting']} "
             f"(measured rate {metrics['noise']['noise_rate']:.3f}), {metrics['num_train']} train / "
             f"{metrics['num_val']} val / {metrics['num_test']} test", header, "-" * len(header)]
    first = next(iter(metrics["presets"].values()))
    lines.append(f"{'Standard (noisy)':<22}{first['noisy_label_acc']:>10.3f}{'':>9}{'':>11}{'':>8}"
                 f"{first['standard_test_acc']:>10.3f}")
    names = {"paper": "paper preset", "synref": "synref default"}
    for name, row in metrics["presets"].items():
        lines.append(f"{names[name]:<22}{row['refined_label_acc']:>10.3f}{row['num_changed']:>9d}"
                     f"{row['relabel_precision']:>11.3f}{row['relabel_recall']:>8.3f}{row['refined_test_acc']:>10.3f}"
                     f"{row['control_test_acc']:>9.3f}")
    lines.append("label acc: training labels vs the truth; test acc: after fine-tuning on the row's labels; "
                 "control: the same fine-tuning on the noisy labels.")
    lines.append(f"total {metrics['seconds']:.1f} s")
    return "\n".join(lines)

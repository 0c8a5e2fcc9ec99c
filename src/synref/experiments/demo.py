"""``synref demo``: the whole method on scikit-learn's digits, as two runs of the experiment runner.

A clean test split is held out, noise is injected into the training labels, "Standard" is
trained on them (a small clean validation split picks the best epoch, as in the paper), glyph
anchors are rendered, the labels are refined by each preset -- ``paper`` (the paper's rule on the
Standard model, its fine-tuning) and ``synref`` (the digits protocol: cross-fitted evidence and
:data:`~synref.refiners.DEFAULT_REFINER`) -- and the Standard model is fine-tuned on them
(``ours``) and, as a control, on the noisy labels (``control``). Output: a table and
``OUT/metrics.json`` (plus the label arrays, ``config.json`` and the runner's cells).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..config import ConfigMixin
from ..data import load_labels_file
from ..errors import InputError
from ..hashing import digest
from ..io import check_output_dir, write_json, write_npy
from ..noise import format_noise_spec, parse_noise_spec
from ..refiners import relabel_metrics
from ..train import TrainConfig
from ..validation import check_split_seed
from ..pipeline import RefinerSpec
from .protocol import PAPER_EVIDENCE, Protocol, digits_protocol
from .recipes import ExperimentData, digits_paper_finetune
from .runner import Experiment, SharedSteps

__all__ = ["DemoConfig", "PRESETS", "run_demo", "format_demo_table"]

#: the demo's rows: the paper's recipe and synref's.
PRESETS = ("paper", "synref")


@dataclass
class DemoConfig(ConfigMixin):
    """Everything ``synref demo`` does (saved as ``OUT/config.json``; ``DemoConfig.load`` re-runs it).

    Attributes:
        noise, rate: a noise kind with its rate, or a full setting (``"pmd-0.35+u-0.3"``).
        noise_file: noisy labels of the training split instead (``.npy`` / one per line).
        pmd_type: PMD type of generated noise. seed: splits, noise, training.
        presets: the rows (``paper``, ``synref``).
        protocol: the digits protocol (model, split, Standard recipe, synref's refinement and
            fine-tuning, anchors per class); ``paper_finetune``: the paper row's fine-tuning.
        noise_setting: the normalised noise setting (derived).
    """

    config_name = "demo config"

    noise: str = "pmd"
    rate: float = 0.7
    noise_file: Optional[str] = None
    pmd_type: int = 1
    seed: int = 0
    presets: Tuple[str, ...] = PRESETS
    protocol: Protocol = field(default_factory=digits_protocol)
    paper_finetune: TrainConfig = field(default_factory=digits_paper_finetune)
    noise_setting: str = field(init=False, default="")

    def __post_init__(self) -> None:
        check_split_seed(self.seed, "--seed")
        self.presets = tuple(self.presets)
        unknown = [p for p in self.presets if p not in PRESETS]
        if unknown or not self.presets:
            raise InputError(f"unknown preset {unknown[0] if unknown else ''!r}; choose paper or synref")
        self.noise_setting = format_noise_spec(parse_noise_spec(self.noise, self.rate))
        if self.pmd_type != self.protocol.pmd_type:
            self.protocol = dataclasses.replace(self.protocol, pmd_type=self.pmd_type)

    def protocols(self) -> Dict[str, Protocol]:
        """The protocol of each preset row, named by its content (so a changed demo never reuses
        another's cells)."""
        paper = dataclasses.replace(self.protocol, evidence=PAPER_EVIDENCE, refiner=RefinerSpec("paper"),
                                    finetune=self.paper_finetune)
        out = {"paper": paper, "synref": self.protocol}
        return {name: dataclasses.replace(p, name=f"demo-{name}-{digest(p.to_dict(), length=8)}")
                for name, p in out.items() if name in self.presets}

    def setting(self) -> str:
        """The noise column: the setting, or ``file:<stem>`` for a label file."""
        return self.noise_setting if self.noise_file is None else f"file:{Path(self.noise_file).stem}"


def _check_noise_file(config: DemoConfig):
    def check(data: ExperimentData) -> None:
        load_labels_file(config.noise_file, num_samples=len(data.train), num_classes=data.num_classes)
    return check


def run_demo(config: Optional[DemoConfig] = None, *, out: Optional[Path] = None) -> Dict[str, Any]:
    """Run the demo; write ``out/metrics.json`` (and labels) if ``out`` is given. Returns the metrics.

    Top-level metric keys describe synref's row when it ran (else the paper's); ``presets`` holds
    both rows. With ``out`` the runner's cells and shared steps are kept there, so a re-run resumes.
    """
    config = config or DemoConfig()
    if out is not None:
        check_output_dir(out)
        out = Path(out)
    started = time.time()
    seed, setting = config.seed, config.setting()
    files = {} if config.noise_file is None else {setting: Path(config.noise_file)}
    shared = SharedSteps()
    rows: Dict[str, Dict[str, Any]] = {}
    experiment: Optional[Experiment] = None
    for preset, protocol in config.protocols().items():
        t0 = time.time()
        experiment = Experiment("digits", protocol, out=out, noise_files=files, shared=shared)
        cells = experiment.run(["standard", "ours", "control"], [setting], [seed],
                               preflight=None if config.noise_file is None else _check_noise_file(config))
        by = {c["method"]: c for c in cells}
        run = experiment.noise_run(setting, seed)
        refined = run.refined()
        row: Dict[str, Any] = relabel_metrics(run.noisy(), refined, run.runner.data.train.labels)
        row.update(standard_test_acc=by["standard"]["test_acc"], refined_test_acc=by["ours"]["test_acc"],
                   control_test_acc=by["control"]["test_acc"], refiner=protocol.refiner.name,
                   **{k: run.refine_info[k] for k in ("alpha", "threshold") if k in run.refine_info},
                   seconds=round(time.time() - t0, 2))
        if run.refine_info.get("rounds") and protocol.refine == "synref":
            row["rounds"] = run.refine_info["rounds"]
        rows[preset] = row
        rows[preset]["_refined_labels"] = refined
    assert experiment is not None
    run = experiment.noise_run(setting, seed)
    data = run.runner.data
    noise_info = dict(run.noise_info)
    if config.noise_file is not None:
        noise_info = {"setting": f"file {Path(config.noise_file).name}", "file": str(config.noise_file),
                      "noise_rate": noise_info["noise_rate"]}
    main = "synref" if "synref" in rows else "paper"
    metrics: Dict[str, Any] = {
        "dataset": "digits (scikit-learn)",
        "noise": noise_info,
        "num_train": len(data.train), "num_val": len(data.val), "num_test": len(data.test),
        "anchors": {"generator": "glyph", "per_class": config.protocol.anchors_per_class},
        "main_preset": main,
    }
    for key in ("noisy_label_acc", "refined_label_acc", "relabel_precision", "relabel_recall",
                "standard_test_acc", "refined_test_acc"):
        metrics[key] = rows[main][key]
    metrics["presets"] = {name: {k: v for k, v in row.items() if not k.startswith("_")} for name, row in rows.items()}
    metrics["seconds"] = round(time.time() - started, 2)
    if out is not None:
        write_npy(out / "noisy_labels.npy", run.noisy())
        write_npy(out / "true_labels.npy", data.train.labels)
        for name, row in rows.items():
            write_npy(out / f"refined_labels_{name}.npy", row["_refined_labels"])
        config.save(out / "config.json")
        write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return metrics


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

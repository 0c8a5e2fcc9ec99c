"""``synref bench``: the paper's table (methods x noise settings x seeds) with one command, as a
run of the experiment runner.

Methods (rows): ``standard``, ``ours``, ``plc``, ``plc+ours``, ``lra-<encoder>`` and
``lra-<encoder>+ours`` (:mod:`synref.experiments.methods`). Noise settings (columns):
``pmd-0.35``, ``pmd-0.7``, ``pmd-0.35+u-0.3``, ``pmd-0.35+u-0.6``, ``pmd-0.35+a-0.3``, or label
files. Protocols: :mod:`synref.experiments.protocol` (``paper``, ``cpu``, ``digits``).
``evidence="finetune"`` (``--evidence finetune``, the protocols with pretrained evidence: ``cpu``
and ``pretrained``): the shared evidence of each noise setting and seed is the fine-tuned one
(:mod:`synref.tuned_evidence`: the frozen pass, then a k-fold fine-tuned backbone's out-of-fold
softmax as a separate view), read by every correction row and by the refinement of the
``+ ours`` rows; the protocol is named ``<protocol>-finetune[-<options' hex>]`` and its
fine-tuning kept under ``OUT/work/`` with the other shared steps.

A user's own data (``dataset`` = an image folder or a CSV manifest): protocol ``pretrained``, the
correction methods (``given``, ``cleanlab``, ``refine-<refiner>``) on pretrained evidence (the
frozen encoder's features streamed from the files, cross-fitted linear heads), measured against
clean labels (``clean_labels``, or the dataset's own when ``labels`` gives the noisy ones); noise
setting ``given`` = the given labels (uniform / asymmetric noise on the clean labels also works:
``u-0.3``); a clean test split (CSV ``split`` column or split folders) adds each method's
linear-probe test accuracy.

Everything is resumable: each finished cell is written at once to ``OUT/cells/<cell>.json`` and
``OUT/results.csv`` / ``OUT/results.md`` are rebuilt from the cells; the expensive shared steps
(noisy labels, the Standard model, refined labels, encoder features) are cached under
``OUT/work/``. A re-run skips finished cells. ``OUT/config.json`` (a :class:`BenchConfig`)
re-runs the grid: ``synref bench --config OUT/config.json --out OUT2``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import ConfigMixin
from ..device import default_device
from ..errors import InputError
from ..io import absolute_path, check_output_dir
from ..tuned_evidence import finetune_options
from ..validation import check_split_seed
from .methods import create_method, parse_methods
from .protocol import Protocol, protocol_for, with_finetune_evidence, with_refine_encoder
from .recipes import (DATASETS, GIVEN, NOISE_SETTINGS, is_user_dataset, noise_files as find_noise_files,
                      user_dataset_name)
from .results import read_cells
from .runner import Experiment, parse_noise_settings

__all__ = ["BenchConfig", "bench_config", "bench_protocol", "run_bench", "check_bench_options", "BENCH_OPTION_RULES"]


@dataclass
class BenchConfig(ConfigMixin):
    """One ``synref bench`` invocation (saved as ``OUT/config.json``).

    Attributes:
        dataset: cifar10, cifar100, digits, or an image folder / CSV manifest (the user's data).
        protocol: the full protocol (recipes included).
        data: the CIFAR folder. methods, noise: the grid's rows and columns (normalised).
        noise_files: community label folders / label files. seeds: the seeds.
        anchors: an anchor set (else glyph anchors or the real-anchor stand-in; required for the
            user's data).
        device, clip_model: where to train; the CLIP model of ``lra-clip``.
        split, labels, clean_labels, test_split: the user's data: the split refined, its given
            labels file, its clean labels file, the clean test split (None: none).
    """

    config_name = "bench config"

    dataset: str = "digits"
    protocol: Protocol = field(default_factory=lambda: protocol_for("digits", "digits"))
    data: Optional[str] = None
    methods: Tuple[str, ...] = ()
    noise: Tuple[str, ...] = ()
    noise_files: Tuple[str, ...] = ()
    seeds: Tuple[int, ...] = (0,)
    anchors: Optional[str] = None
    device: Optional[str] = None
    clip_model: Optional[str] = None
    split: str = "train"
    labels: Optional[str] = None
    clean_labels: Optional[str] = None
    test_split: Optional[str] = "test"

    def __post_init__(self) -> None:
        # files are stored absolute: OUT/config.json names the same files when re-run from elsewhere
        if is_user_dataset(self.dataset):
            self.dataset = absolute_path(self.dataset)
        for name in ("data", "anchors", "labels", "clean_labels"):
            if getattr(self, name) is not None:
                setattr(self, name, absolute_path(getattr(self, name)))
        self.noise_files = tuple(absolute_path(f) for f in self.noise_files)
        if is_user_dataset(self.dataset):
            check_user_dataset(self.dataset)
        elif self.dataset != "digits" and not self.data:
            raise InputError(f"--dataset {self.dataset} needs --data DIR (the official CIFAR python layout)")
        self.methods = tuple(self.methods)
        self.noise = tuple(self.noise)
        self.noise_files = tuple(str(f) for f in self.noise_files)
        self.seeds = tuple(check_split_seed(s, "--seeds") for s in self.seeds)
        if not self.seeds:
            raise InputError("--seeds: no seed given")


def check_user_dataset(dataset: str) -> None:
    """InputError unless ``dataset`` is a built-in name or an existing folder / .csv file."""
    path = Path(dataset).expanduser()
    if not (path.is_dir() or (path.is_file() and path.suffix.lower() == ".csv")):
        raise InputError(f"--dataset {dataset!r}: not one of {', '.join(DATASETS)} nor an image folder or a .csv "
                         f"manifest")


def user_methods(methods: Optional[str]) -> List[str]:
    """The rows of a user dataset: correction methods only (default: given, cleanlab when installed,
    and every refiner)."""
    import importlib.util

    from ..refiners import REFINERS

    if methods is None:
        default = ["given"] + (["cleanlab"] if importlib.util.find_spec("cleanlab") else [])
        return default + [f"refine-{r}" for r in REFINERS.names()]
    chosen = list(dict.fromkeys(m.strip().lower() for m in methods.split(",") if m.strip()))
    if not chosen:
        raise InputError("--methods: no method given")
    for method in chosen:
        if create_method(method).kind != "correct":
            raise InputError(f"--methods {method}: on your own data bench runs the correction methods (given, "
                             f"cleanlab, refine-<refiner>); {method} trains a network on images in memory")
    return chosen


#: ``synref bench`` options that apply to some runs only: option -> (applies(dataset, methods,
#: protocol)?, what it applies to).
BENCH_OPTION_RULES: Dict[str, Tuple[Callable[[str, Sequence[str], Protocol], bool], str]] = {
    **{name: ((lambda dataset, methods, protocol: is_user_dataset(dataset)), "your own data (--dataset DIR_OR_CSV)")
       for name in ("labels", "clean_labels", "split", "test_split")},
    "data": ((lambda dataset, methods, protocol: dataset in ("cifar10", "cifar100")),
             "--dataset cifar10 / cifar100 (the official python layout; digits ship with scikit-learn, your own "
             "data is --dataset)"),
    "clip_model": ((lambda dataset, methods, protocol: protocol.evidence.encoder == "clip" or
                    any(m.startswith("lra-clip") for m in methods)), "the lra-clip rows and --encoder clip"),
    "evidence": ((lambda dataset, methods, protocol: protocol.evidence.tuning != "finetune" or any(
        method.kind == "correct" or method.refined for method in map(create_method, methods))),
        "the rows that read the refinement's evidence (the correction rows, ours and the + ours rows)"),
}


def check_bench_options(dataset: str, methods: Sequence[str], protocol: Protocol, given: Dict[str, str]) -> None:
    """InputError naming the first option of ``given`` (option -> the flag the user wrote) that
    this bench run would not use, and what it applies to."""
    for option, flag in given.items():
        rule = BENCH_OPTION_RULES.get(option)
        if rule is not None and not rule[0](dataset, methods, protocol):
            what = "your own data" if is_user_dataset(dataset) else f"--dataset {dataset}"
            raise InputError(f"{flag} does not apply to {what} with methods {','.join(methods)}; it applies to "
                             f"{rule[1]}")


def _set_options(given: Optional[Dict[str, str]], **values: Any) -> Dict[str, str]:
    """``given``, or (a library call) the options whose value differs from the command's default."""
    if given is not None:
        return given
    defaults = {"split": "train", "test_split": "test", "evidence": "frozen"}
    return {k: "--" + k.replace("_", "-") for k, v in values.items() if v is not None and v != defaults.get(k)}


def bench_protocol(protocol: str, dataset: str, overrides: Optional[Callable[[Protocol], None]] = None, *,
                   encoder: Optional[str] = None, evidence: str = "frozen",
                   finetune: Optional[Mapping[str, Any]] = None) -> Protocol:
    """The named protocol for ``dataset`` (a built-in name or a user dataset's name), edited by
    ``overrides``, in the frozen space ``encoder`` (None: the protocol's) and, with ``evidence``
    ``finetune``, with fine-tuned evidence of the options ``finetune`` (field -> value of
    :class:`~synref.tuned_evidence.FinetuneOptions`; refused without it)."""
    proto = protocol_for(protocol, dataset, overrides)
    if encoder is not None:
        proto = with_refine_encoder(proto, encoder)
    options = finetune_options(evidence, finetune or {})
    return proto if options is None else with_finetune_evidence(proto, options)


def bench_config(*, dataset: str = "digits", protocol: str = "digits", data: Optional[str] = None,
                 methods: Optional[str] = None, noise: Optional[str] = None, seeds: Sequence[int] = (0,),
                 noise_files: Sequence[str] = (), anchors: Optional[str] = None, device: Optional[str] = None,
                 clip_model: Optional[str] = None,
                 protocol_overrides: Optional[Callable[[Protocol], None]] = None, split: str = "train",
                 labels: Optional[str] = None, clean_labels: Optional[str] = None,
                 test_split: Optional[str] = "test", encoder: Optional[str] = None, evidence: str = "frozen",
                 finetune: Optional[Mapping[str, Any]] = None,
                 given: Optional[Dict[str, str]] = None) -> BenchConfig:
    """The :class:`BenchConfig` of command-line style arguments: the named protocol (edited by
    ``protocol_overrides``; ``encoder``: the refinement's frozen space, e.g. ``hf:ID_OR_FOLDER``;
    ``evidence`` ``finetune`` with the ``finetune`` options: fine-tuned evidence, see
    :func:`bench_protocol`), methods in table order, the noise settings (the paper's five unless
    only label files are given, then theirs; ``given`` on the user's data) and the label files
    found. An option that this run would not use is refused (:func:`check_bench_options`;
    ``given``: the options the user set -> their flags, default those with a value other than the
    command's default)."""
    given = _set_options(given, data=data, labels=labels, clean_labels=clean_labels, split=split,
                         test_split=test_split, clip_model=clip_model, evidence=evidence)
    if is_user_dataset(dataset):
        check_user_dataset(dataset)
        proto = bench_protocol(protocol, user_dataset_name(dataset), protocol_overrides, encoder=encoder,
                               evidence=evidence, finetune=finetune)
        check_bench_options(dataset, user_methods(methods), proto, given)
        settings = parse_noise_settings(noise, (GIVEN,))
        seeds = [int(s) for s in seeds]
        return BenchConfig(dataset=dataset, protocol=proto, methods=tuple(user_methods(methods)),
                           noise=tuple(settings), noise_files=tuple(str(f) for f in noise_files),
                           seeds=tuple(seeds), anchors=anchors, device=device, clip_model=clip_model, split=split,
                           labels=labels, clean_labels=clean_labels, test_split=test_split)
    proto = bench_protocol(protocol, dataset, protocol_overrides, encoder=encoder, evidence=evidence,
                           finetune=finetune)
    method_list = parse_methods(methods, proto.encoders)
    check_bench_options(dataset, method_list, proto, given)
    settings = parse_noise_settings(noise, NOISE_SETTINGS) if (noise is not None or not noise_files) else []
    seeds = [check_split_seed(s, "--seeds") for s in seeds]
    if not seeds:
        raise InputError("--seeds: no seed given")
    if dataset != "digits" and not data:
        raise InputError(f"--dataset {dataset} needs --data DIR (the official CIFAR python layout)")
    files = find_noise_files(noise_files, dataset, settings or NOISE_SETTINGS)
    if not settings:  # only label files given: their settings are the columns
        settings = [s for s in NOISE_SETTINGS if s in files] + sorted(s for s in files if s.startswith("file:"))
    else:
        settings += sorted(s for s in files if s.startswith("file:"))
    return BenchConfig(dataset=dataset, protocol=proto, data=data, methods=tuple(method_list), noise=tuple(settings),
                       noise_files=tuple(str(f) for f in noise_files), seeds=tuple(seeds), anchors=anchors,
                       device=device, clip_model=clip_model)


def run_bench(config: Optional[BenchConfig] = None, *, out: Path, **arguments: Any) -> List[Dict[str, Any]]:
    """Run (or resume) the grid of ``config`` (or of :func:`bench_config` ``(**arguments)``);
    returns every finished row of this dataset + protocol in ``out`` and writes
    ``out/results.csv`` / ``out/results.md`` and ``out/config.json``."""
    out = Path(out)
    check_output_dir(out)
    if config is None:
        config = bench_config(**arguments)
    elif arguments:
        raise InputError(f"give a bench config or arguments, not both ({', '.join(sorted(arguments))})")
    files = find_noise_files(config.noise_files, config.dataset, config.noise or NOISE_SETTINGS)
    device = config.device or default_device()
    name, data, user = config.dataset, config.data, None
    if is_user_dataset(config.dataset):
        name, data = user_dataset_name(config.dataset), config.dataset
        user = {"split": config.split, "labels": config.labels, "clean_labels": config.clean_labels,
                "test_split": config.test_split}
    experiment = Experiment(name, config.protocol, out=out, data=data, noise_files=files,
                            anchors=config.anchors, device=device, clip_model=config.clip_model, user_data=user)
    # a user's data is loaded (labels, anchors, splits checked) before anything is written
    experiment.run(config.methods, config.noise, config.seeds,
                   preflight=(lambda data: None) if user is not None else None)
    config.save(out / "config.json")
    return [r for r in read_cells(out) if r["dataset"] == name and r["protocol"] == config.protocol.name]

"""``synref bench``: the paper's table (methods x noise settings x seeds) with one command, as a
run of the experiment runner.

Methods (rows): ``standard``, ``ours``, ``plc``, ``plc+ours``, ``lra-<encoder>`` and
``lra-<encoder>+ours`` (:mod:`synref.experiments.methods`). Noise settings (columns):
``pmd-0.35``, ``pmd-0.7``, ``pmd-0.35+u-0.3``, ``pmd-0.35+u-0.6``, ``pmd-0.35+a-0.3``, or label
files. Protocols: :mod:`synref.experiments.protocol` (``paper``, ``cpu``, ``digits``).

Everything is resumable: each finished cell is written at once to ``OUT/cells/<cell>.json`` and
``OUT/results.csv`` / ``OUT/results.md`` are rebuilt from the cells; the expensive shared steps
(noisy labels, the Standard model, refined labels, encoder features) are cached under
``OUT/work/``. A re-run skips finished cells. ``OUT/config.json`` (a :class:`BenchConfig`)
re-runs the grid: ``synref bench --config OUT/config.json --out OUT2``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..config import ConfigMixin
from ..device import default_device
from ..errors import InputError
from ..io import check_output_dir
from ..validation import check_split_seed
from .methods import parse_methods
from .protocol import Protocol, protocol_for
from .recipes import DATASETS, NOISE_SETTINGS, noise_files as find_noise_files
from .results import read_cells
from .runner import Experiment, parse_noise_settings

__all__ = ["BenchConfig", "bench_config", "run_bench"]


@dataclass
class BenchConfig(ConfigMixin):
    """One ``synref bench`` invocation (saved as ``OUT/config.json``).

    Attributes:
        dataset: cifar10, cifar100 or digits. protocol: the full protocol (recipes included).
        data: the CIFAR folder. methods, noise: the grid's rows and columns (normalised).
        noise_files: community label folders / label files. seeds: the seeds.
        anchors: an anchor set (else glyph anchors or the real-anchor stand-in).
        device, clip_model: where to train; the CLIP model of ``lra-clip``.
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

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise InputError(f"unknown --dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        if self.dataset != "digits" and not self.data:
            raise InputError(f"--dataset {self.dataset} needs --data DIR (the official CIFAR python layout)")
        self.methods = tuple(self.methods)
        self.noise = tuple(self.noise)
        self.noise_files = tuple(str(f) for f in self.noise_files)
        self.seeds = tuple(check_split_seed(s, "--seeds") for s in self.seeds)
        if not self.seeds:
            raise InputError("--seeds: no seed given")


def bench_config(*, dataset: str = "digits", protocol: str = "digits", data: Optional[str] = None,
                 methods: Optional[str] = None, noise: Optional[str] = None, seeds: Sequence[int] = (0,),
                 noise_files: Sequence[str] = (), anchors: Optional[str] = None, device: Optional[str] = None,
                 clip_model: Optional[str] = None,
                 protocol_overrides: Optional[Callable[[Protocol], None]] = None) -> BenchConfig:
    """The :class:`BenchConfig` of command-line style arguments: the named protocol (edited by
    ``protocol_overrides``), methods in table order, the noise settings (the paper's five unless
    only label files are given, then theirs) and the label files found."""
    proto = protocol_for(protocol, dataset, protocol_overrides)
    method_list = parse_methods(methods, proto.encoders)
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
    experiment = Experiment(config.dataset, config.protocol, out=out, data=config.data, noise_files=files,
                            anchors=config.anchors, device=device, clip_model=config.clip_model)
    experiment.run(config.methods, config.noise, config.seeds)
    config.save(out / "config.json")
    return [r for r in read_cells(out) if r["dataset"] == config.dataset and r["protocol"] == config.protocol.name]

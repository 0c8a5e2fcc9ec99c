"""Experiments: one protocol config, one methods registry, one resumable runner.

- ``protocol``: :class:`Protocol` and the named :data:`PROTOCOLS` (paper, cpu, digits).
- ``recipes``: schedules, splits, the real-anchor stand-in, glyph anchors, label noise.
- ``methods``: :data:`METHODS` (standard, ours, control, plc, lra-*, given, cleanlab, refine-*).
- ``runner``: :class:`Experiment` / :func:`run_experiment` (cells, shared steps, resume).
- ``results``: cells -> ``results.csv`` / ``results.md``.
- the commands as calls of the runner: ``demo`` (:func:`run_demo`), ``compare``
  (:func:`run_compare`), ``bench`` (:func:`run_bench`).
"""
from __future__ import annotations

from .bench import BenchConfig, bench_config, run_bench
from .compare import compare_with_cleanlab, format_compare_table, run_compare
from .demo import DemoConfig, format_demo_table, run_demo
from .methods import METHODS, create_method, method_base, parse_methods
from .protocol import PROTOCOLS, Protocol, protocol_for
from .recipes import NOISE_SETTINGS, inject_noise, load_experiment_data
from .runner import Experiment, parse_noise_settings, run_experiment

__all__ = ["BenchConfig", "bench_config", "run_bench", "compare_with_cleanlab", "format_compare_table", "run_compare",
           "DemoConfig", "format_demo_table", "run_demo", "METHODS", "create_method", "method_base",
           "parse_methods", "PROTOCOLS", "Protocol", "protocol_for", "NOISE_SETTINGS", "inject_noise",
           "load_experiment_data", "Experiment", "parse_noise_settings", "run_experiment"]

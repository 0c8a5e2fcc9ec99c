"""Applications over the library: the ``synref refine`` workflow on a user's data
(:func:`run_refine`) and the HTML report of its results folder (:func:`write_report`)."""
from __future__ import annotations

from .refine_run import RefineRunConfig, format_refine_summary, run_refine
from .report import render_report, write_report

__all__ = ["RefineRunConfig", "run_refine", "format_refine_summary", "write_report", "render_report"]

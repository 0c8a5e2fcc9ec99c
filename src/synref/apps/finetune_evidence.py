"""``synref refine --evidence finetune``: the fine-tuned evidence of :mod:`synref.tuned_evidence`
(the one recipe, shared with ``synref bench`` / ``compare``) inside a refine run.

The frozen pass runs first (:mod:`synref.apps.refine_run`); :func:`finetune_refinement` then
fine-tunes over it (cached in ``OUT/cache``: ``finetune-<key>.npz`` and, while it trains,
``finetune-checkpoints/``) and runs the refiner again with the fine-tuned out-of-fold softmax as a
separate view; :func:`add_finetune_info` adds its facts to the summary. Under a multi-process
launch the folds are shared between the processes and every process refines its share of the
rows, as the frozen pass does.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..config import check_value_type
from ..data import LabeledImages
from ..errors import InputError
from ..pipeline import TUNINGS
from ..refiners import Refiner, RefinementResult, refine
from ..train.finetune import FinetuneConfig
from ..tuned_evidence import (FINETUNE_DEFAULTS, FinetuneOptions, VIEWS, describe_finetune, finetune_config as
                              options_config, finetuned_evidence, soft_targets, view_probs)

__all__ = ["EVIDENCE_CHOICES", "FINETUNE_DEFAULTS", "VIEWS", "check_evidence_options", "finetune_options",
           "finetune_config", "soft_targets", "view_probs", "finetune_refinement", "add_finetune_info"]

#: ``--evidence``: ``frozen`` (the pretrained evidence as it is) or ``finetune`` (this module):
#: the run's ``evidence.tuning``.
EVIDENCE_CHOICES = TUNINGS


def finetune_options(config: Any) -> FinetuneOptions:
    """The :class:`~synref.tuned_evidence.FinetuneOptions` of a ``RefineRunConfig`` (its flat
    ``finetune_*`` / ``anchor_weight`` fields; a bad value: one line naming its option)."""
    check_value_type(config.config_name, "finetune_flip", config.finetune_flip, bool)
    return FinetuneOptions(**{name: getattr(config, name) for name in FINETUNE_DEFAULTS})


def check_evidence_options(config: Any) -> None:
    """InputError (one line naming the option) for a ``RefineRunConfig`` whose ``evidence`` or
    fine-tuning options cannot run: fine-tuning follows the frozen pass of pretrained evidence and
    the posterior refiner reads its ``pred_probs``."""
    finetune_options(config)
    if config.evidence.tuning != "finetune":
        return
    if config.evidence_mode != "pretrained":
        flag = {"train": "--train", "classifier": "--classifier", "features": "--features"}[config.evidence_mode]
        raise InputError(f"--evidence finetune fine-tunes after the frozen encoder's pass (pretrained evidence); "
                         f"it does not apply with {flag}")
    if config.refiner.name != "posterior":
        raise InputError(f"--evidence finetune feeds the posterior refiner (the fine-tuned softmax as a separate "
                         f"view); it does not apply to --refiner {config.refiner.name}")


def finetune_config(config: Any, device: Optional[str] = None) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of a ``RefineRunConfig`` (its folds and seed; ``device``: the
    process's device under a launch, else ``auto``)."""
    return options_config(finetune_options(config), folds=int(config.evidence.folds), seed=int(config.seed),
                          device=device)


def finetune_refinement(config: Any, dataset: LabeledImages, anchors: LabeledImages, features: Any,
                        anchor_features: Any, frozen: RefinementResult, refiner: Refiner, cache: Path, *,
                        device: Optional[str] = None) -> Tuple[RefinementResult, Dict[str, Any]]:
    """The refinement with fine-tuned evidence (:func:`synref.tuned_evidence.finetuned_evidence`)
    and its facts for the summary.

    Args:
        config: the run's ``RefineRunConfig``.
        dataset, anchors: the samples (path-backed or arrays, the rows of ``features``) and the anchors.
        features, anchor_features: the frozen space (N, D) and (M, D) the refiner reads.
        frozen: the frozen pass's refinement (its scores become the soft targets).
        refiner: the run's refiner.
    """
    evidence, facts = finetuned_evidence(frozen, dataset, anchors, features, anchor_features,
                                         finetune_config(config, device), cache, space=config.space,
                                         skip_bad=bool(config.skip_bad), what=f"--data {config.data}")
    t0 = time.time()
    result = refine(evidence, refiner)
    facts["timings"]["finetune_refine"] = round(time.time() - t0, 3)
    return result, facts


def add_finetune_info(info: Dict[str, Any], facts: Dict[str, Any]) -> Dict[str, Any]:
    """The summary facts of a frozen run (``info``) with the fine-tuning's (``facts`` of
    :func:`finetune_refinement`): ``evidence.mode`` ``finetune``, ``evidence.finetune`` (``config``,
    ``targets``, ``per_fold`` chosen epochs, histories and seconds, ``seconds``), the timings."""
    tuned = facts["finetune"]
    info = dict(info)
    info["evidence"] = {**info.get("evidence", {}), "mode": "finetune", "finetune": tuned}
    info["timings"] = {**info.get("timings", {}), **facts["timings"]}
    info["classifier"] = f"{info.get('classifier')}; then {describe_finetune(FinetuneConfig(**tuned['config']))}"
    return info

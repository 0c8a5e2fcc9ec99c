"""``crossfit``: the calibrated score rule: anchor-calibrated similarity + out-of-sample softmax,
over several rounds (synref's default before ``posterior``, :data:`~synref.refiners.DEFAULT_REFINER`).

The score rule is the paper's (``alpha * sim + (1 - alpha) * pred_probs``, relabel at
``threshold``) with better evidence:

1. the similarity is turned into probabilities by a temperature fitted on held-out anchors
   (they are class-pure: a free calibration set), so both terms are probabilities
   (``calibrate``; or a given ``temperature``);
2. the softmax is out-of-sample (cross-fitted: every sample judged by a model that never
   trained on it) -- that is the evidence's job;
3. rounds: round r asks ``evidence.refit(round r-1's refined labels, r)`` for fresh evidence and
   re-scores the *given* labels with it (``rounds=1`` needs no ``refit``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import InputError
from ..evidence import Evidence
from ..progress import progress as progress_bar
from .base import REFINERS, Refiner, RefinerOptions
from .calibration import fit_similarity_temperature
from .kernel import refine_by_fold
from .paper import fold_prototypes
from .result import RefinementResult

__all__ = ["CrossfitOptions", "CrossfitRefiner"]


@dataclass
class CrossfitOptions(RefinerOptions):
    """Options of :class:`CrossfitRefiner` (besides alpha, threshold, ...).

    Attributes:
        rounds: refinement rounds; round r > 0 uses ``evidence.refit``.
        calibrate: similarity as anchor-calibrated probabilities (else the raw cosine).
        temperature: use this temperature instead of fitting one (implies calibration).
        seed: the anchor calibration split (None: ``evidence.seed``).
    """

    config_name = "crossfit options"

    rounds: int = 3
    calibrate: bool = True
    temperature: Optional[float] = None
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.rounds) < 1:
            raise InputError(f"rounds must be at least 1, got {self.rounds}")
        if self.temperature is not None and not float(self.temperature) > 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")


@REFINERS.register("crossfit")
class CrossfitRefiner(Refiner):
    """Calibrated similarity + cross-fitted softmax, ``rounds`` rounds (see the module docstring)."""

    name = "crossfit"
    Options = CrossfitOptions

    def refine(self, evidence: Evidence, *, true_labels: Optional[np.ndarray] = None) -> RefinementResult:
        o: CrossfitOptions = self.options  # type: ignore[assignment]
        if o.rounds > 1 and evidence.refit is None:
            raise InputError(f"refiner crossfit with rounds={o.rounds} needs evidence that can be refit "
                             f"(evidence.refit); give rounds=1 or build the evidence with a cross-fitted head")
        seed = evidence.seed if o.seed is None else int(o.seed)
        temperatures: List[float] = []
        spaces: Dict[str, Any] = {}
        rounds: List[Dict[str, Any]] = []
        current = evidence
        result: Optional[RefinementResult] = None
        bar = progress_bar(range(o.rounds), desc="refine rounds", unit="round", enabled=None if o.rounds > 1 else False)
        for r in bar:
            if r > 0:
                assert result is not None and evidence.refit is not None
                current = evidence.refit(result.refined_labels, r)
            prototypes, temps = self._space(current, seed, spaces, temperatures)
            result = refine_by_fold(evidence.labels, pred_probs=current.resolve_pred_probs(), features=current.features,
                                    fold_ids=current.fold_ids, prototypes=prototypes, temperatures=temps,
                                    alpha=o.alpha, threshold=o.threshold, keep_scores=o.keep_scores,
                                    keep_similarity=o.keep_scores, chunk_rows=o.chunk_rows,
                                    num_threads=o.num_threads)
            stats: Dict[str, Any] = {"round": r, "num_changed": result.num_changed()}
            if true_labels is not None:
                stats["refined_label_acc"] = float(np.mean(result.refined_labels == np.asarray(true_labels)))
            rounds.append(stats)
            bar.set_postfix(changed=stats["num_changed"])
        bar.close()
        assert result is not None
        result.info.update(refiner=self.name, preset=self.name, rounds=rounds, temperatures=temperatures,
                           calibrate=o.calibrate or o.temperature is not None, pred_probs=current.resolve_pred_probs(),
                           **current.description)
        return result

    def _space(self, evidence: Evidence, seed: int, cache: Dict[str, Any], temperatures: List[float]):
        """Prototypes and temperatures of ``evidence``'s space(s); a fixed space shared by every
        round is calibrated once."""
        o: CrossfitOptions = self.options  # type: ignore[assignment]
        key = (id(evidence.features), id(evidence.anchor_features))
        if evidence.fold_ids is None and cache.get("key") == key:
            return cache["prototypes"], cache["temperatures"]
        prototypes = fold_prototypes(evidence)
        spaces = [evidence.anchor_features] if evidence.fold_ids is None else list(evidence.anchor_features)
        if o.temperature is not None:
            temps = [float(o.temperature)] * len(spaces)
        elif o.calibrate:
            temps = [fit_similarity_temperature(a, evidence.anchor_labels, evidence.num_classes, seed=seed,
                                                class_names=evidence.class_names) for a in spaces]
            temperatures.extend(temps)
        else:
            temps = [None] * len(spaces)
        if evidence.fold_ids is None:
            cache.update(key=key, prototypes=prototypes, temperatures=temps)
        return prototypes, temps

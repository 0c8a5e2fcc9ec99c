"""What the report of a results folder says about how its labels were decided.

A score rule (``paper``, ``crossfit``) changes a label when its score reaches a threshold: the
report shows alpha, the threshold (a card and a dashed line on the score histograms) and the
temperature. The ``posterior`` refiner decides by the most probable class of the estimated
posterior (or, when its model check fails, confident learning, or nothing): the report shows
what decided, the estimated precision and the model check, and no threshold, alpha or
temperature it did not use. Summaries of older synref (no ``decision.rule``) are read too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

__all__ = ["DecisionStory", "decision_story", "anchors_text"]

#: a fact card: (label, value, shown big).
Fact = Tuple[str, str, bool]


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class DecisionStory:
    """How a run decided, as the report tells it.

    Attributes:
        facts: the decision's fact cards (what decided; the score rule's threshold, alpha and
            temperature, or the posterior's estimated and target precision).
        threshold: the score rule's threshold (the histograms' dashed line), or None.
        note: the scores section's explanation (plain text).
        score_name: what the scores are ("score", "posterior").
    """

    facts: List[Fact]
    threshold: Optional[float]
    note: str
    score_name: str


def decision_story(summary: Mapping[str, Any]) -> DecisionStory:
    """The :class:`DecisionStory` of a ``summary.json`` dict."""
    decision = summary.get("decision") if isinstance(summary.get("decision"), Mapping) else {}
    decided_by = decision.get("decided_by")
    rule = decision.get("rule") if isinstance(decision.get("rule"), Mapping) else None
    if rule is None and decided_by in (None, "score threshold"):  # a score rule (or an older summary of one)
        rule = {"alpha": summary.get("alpha"), "threshold": summary.get("threshold")}
    if rule is not None:
        threshold, alpha = _number(rule.get("threshold")), _number(rule.get("alpha"))
        facts: List[Fact] = [("decided by", "score threshold", False)]
        if threshold is not None:
            facts.append(("threshold", f"{threshold:g}", True))
        if alpha is not None:
            facts.append(("alpha", f"{alpha:g}", False))
        temperature = _number(summary.get("temperature"))
        facts.append(("similarity", "raw cosine" if temperature is None else
                      f"calibrated probabilities (temperature {temperature:g})", False))
        thr = "not recorded" if threshold is None else f"{threshold:g}"
        note = (f"A label is changed to the best class when its score (alpha x anchor similarity + (1 - alpha) x "
                f"pred_probs) reaches the threshold ({thr}, dashed line) and the best class differs from the given "
                f"one.")
        return DecisionStory(facts, threshold, note, "score")
    facts = [("decided by", str(decided_by), False)]
    estimated = _number(decision.get("estimated_precision"))
    if estimated is not None:
        facts.append(("estimated precision of the changes", f"{estimated:.3f}", True))
    target = _number(decision.get("target_precision"))
    if target is not None:
        facts.append(("target precision", f"{target:g}", False))
    if decided_by == "posterior":
        note = ("A label is changed to the most probable class of the estimated posterior (the anchors' prior, the "
                "estimated label noise, the neighbours' given labels) when that class differs from the given one"
                + (f", keeping the most probable changes whose mean posterior (the estimated precision) is at "
                   f"least {target:g}" if target is not None else "") + ". The histograms show the posterior "
                "probability of the best class and of the given label.")
    elif decided_by == "confident-learning":
        note = ("The model check failed (the anchors do not describe these images), so confident learning on the "
                "given labels and pred_probs decided: a flagged label is changed to the argmax of pred_probs. "
                "The histograms show pred_probs of the best class and of the given label.")
    else:
        why = decision.get("minimum_evidence") if decision.get("minimum_evidence", "met") != "met" else \
            decision.get("model_check")
        note = f"No label was changed ({why})." if why else "No label was changed."
    return DecisionStory(facts, None, note, "posterior" if decided_by == "posterior" else "score")


def anchors_text(anchors: Any) -> str:
    """The anchors card: where the run's anchors came from, in words (not the raw dict)."""
    if not isinstance(anchors, Mapping):
        return "\u2014" if anchors in (None, "") else str(anchors)
    if anchors.get("features"):
        return f"given features {Path(str(anchors['features'])).name} (labels {Path(str(anchors.get('labels'))).name})"
    where = str(anchors.get("dir") or "")
    text = (f"generated by {anchors['generated']} into {where}" if anchors.get("generated") else
            f"anchor set {where}" if where else "\u2014")
    ignored = anchors.get("ignored_anchor_classes") or []
    if ignored:
        text += f"; {len(ignored)} anchor class(es) not in the data ignored"
    return text

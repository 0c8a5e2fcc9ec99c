"""The typed decision on a RefinementResult: what decided, the model check, the score rule only
on the score rules; and summary.json's ``decision`` written from it."""
import json

import numpy as np
import pytest

from synref.errors import InputError
from synref.evidence import Evidence
from synref.refiners import Decision, ScoreRule, refine


def _problem(n=300, c=3, d=12, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(c, d)) * 2.0
    y = rng.integers(0, c, n)
    x = (means[y] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    ya = np.repeat(np.arange(c), 20)
    a = (means[ya] + 0.5 * rng.normal(size=(len(ya), d))).astype(np.float32)
    given = y.copy()
    flip = rng.random(n) < 0.2
    given[flip] = (y[flip] + 1) % c
    probs = np.full((n, c), 0.1, np.float32)
    probs[np.arange(n), given] = 0.8
    return Evidence(given, c, ya, features=x, anchor_features=a, pred_probs=probs / probs.sum(1, keepdims=True))


def test_posterior_decision_is_typed_and_has_no_score_rule():
    result = refine(_problem(), "posterior")
    d = result.decision
    assert isinstance(d, Decision) and d.decided_by == "posterior" and d.model_check == "passed"
    assert d.rule is None and result.alpha is None and result.threshold is None  # no NaN stand-ins
    assert d.minimum_evidence == "met" and 0 < d.estimated_precision <= 1 and d.model_fit is not None
    # the lowest posterior among the changes is the decision's, not a threshold
    assert d.lowest_changed_score == pytest.approx(float(result.best_score[result.changed].min()))
    assert d.neighbor_graph["method"] == "exact"
    for key in ("model_check", "decided_by", "estimated_precision", "minimum_evidence"):
        assert key not in result.info  # the decision lives in one typed place


@pytest.mark.parametrize("name,options", [("paper", {}), ("crossfit", {"rounds": 1})])
def test_score_rules_carry_their_alpha_and_threshold(name, options):
    result = refine(_problem(), name, alpha=0.4, threshold=0.55, **options)
    assert result.decision == Decision("score threshold", rule=ScoreRule(0.4, 0.55))
    assert result.alpha == 0.4 and result.threshold == 0.55
    assert result.decision.model_check is None and result.decision.model_check_passed


def test_decision_round_trips_and_refuses_unknown_values():
    d = refine(_problem(), "posterior").decision
    assert Decision.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    rule = Decision.score_rule(0.5, 0.6)
    assert rule.to_dict()["rule"] == {"alpha": 0.5, "threshold": 0.6}
    assert Decision.from_dict(rule.to_dict()) == rule
    with pytest.raises(InputError, match="decided_by"):
        Decision("majority vote")
    with pytest.raises(InputError, match="unknown key"):
        Decision.from_dict({"decided_by": "posterior", "verdict": "ok"})


def test_fallback_pred_probs_are_not_computed_when_too_little_evidence():
    """A failed model check with too few given labels per class decides nothing, so the
    confident-learning fallback's lazy pred_probs are never computed (at 10^4 x 1000 classes they
    cost 130 s); with enough rows the same failure computes them once and confident learning decides."""
    base = _problem()
    calls = []

    def lazy():
        calls.append(1)
        return base.pred_probs

    # anchors that do not describe the images (noise): the model check fails
    unrelated = np.random.default_rng(9).normal(size=base.anchor_features.shape).astype(np.float32)

    def evidence():
        return Evidence(base.labels, base.num_classes, base.anchor_labels, features=base.features,
                        anchor_features=unrelated, pred_probs_fn=lazy)

    short = refine(evidence(), "posterior", min_model_fit=0.9, min_rows_per_class=1000)
    assert short.decision.model_check.startswith("failed")
    assert short.decision.decided_by == "none" and short.decision.minimum_evidence.startswith("too little evidence")
    assert calls == [] and not short.changed.any()
    enough = refine(evidence(), "posterior", min_model_fit=0.9, min_rows_per_class=0)
    assert enough.decision.decided_by == "confident-learning" and calls == [1]

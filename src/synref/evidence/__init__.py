"""Evidence: everything a refiner may look at, and the builders that make it.

- ``evidence``: the :class:`Evidence` dataclass (labels, anchors, features, out-of-sample
  softmax, fold ids, ``refit``), shape-checked on construction.
- ``builders``: :func:`crossfit_evidence` (synref's route), :func:`linear_head_evidence`,
  :func:`network_evidence`, :func:`classifier_evidence`.
"""
from __future__ import annotations

from .builders import (FEATURE_SPACES, HEADS, CrossFitEvidenceConfig, check_anchor_classes, classifier_evidence,
                       crossfit_evidence, linear_head_evidence, network_evidence, ssl_space)
from .evidence import Evidence, Refit

__all__ = ["Evidence", "Refit", "CrossFitEvidenceConfig", "FEATURE_SPACES", "HEADS", "check_anchor_classes",
           "classifier_evidence", "crossfit_evidence", "linear_head_evidence", "network_evidence", "ssl_space"]

"""Do no harm on small sets: the evidence a refiner needs before it may change a label.

The ``posterior`` refiner reads every label through the noise transition matrix
``T[c, j] = P(given j | true c)``, estimated by moments from the rows of the data: column ``j``
rests on the rows given label ``j``. With a handful of rows per class that estimate is noise, and
the posterior still trusts it: on clean CIFAR-10 subsets (EfficientNet-Lite0 features, 4-fold
linear heads, 20 anchors per class) 25-30 images of 3 classes (8-10 per class) had 64-67 % of
their right labels moved with glyph anchors ("estimated precision" 0.9997) and 7-12 % with
real-image anchors; 100 images of 10 classes (10 per class) 24 % / 10 %.

The rule: every class needs at least :data:`MIN_ROWS_PER_CLASS` given labels (in each space
the refiner estimates T in). Below it an entry of T moves by more than 5 points with a single
row, and a 95 % interval of a proportion near 0.5 is wider than +-0.2 (``1.96 * sqrt(0.25 / 20)``):
no label is changed, and the result says why. The smallest class of the noisiest digits setting
(70 % PMD, 1,168 labels) has 49 rows; CIFAR-10 runs have hundreds per class.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["MIN_ROWS_PER_CLASS", "minimum_evidence"]

#: given labels every class needs before the transition matrix is estimated from them.
MIN_ROWS_PER_CLASS = 20


def minimum_evidence(labels: np.ndarray, num_classes: int, *, min_rows: int = MIN_ROWS_PER_CLASS,
                     class_names: Optional[Sequence[str]] = None) -> Optional[str]:
    """None when every class has at least ``min_rows`` of the given ``labels`` (N,); else one
    sentence saying which class falls short (the fewest rows) and that nothing may change."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=int(num_classes))
    short = np.flatnonzero(counts < int(min_rows))
    if short.size == 0:
        return None
    k = int(short[np.argmin(counts[short])])
    name = f"{k} ({class_names[k]!r})" if class_names is not None and k < len(class_names) else str(k)
    return (f"too little evidence: class {name} has {int(counts[k])} given labels and {short.size} of "
            f"{int(num_classes)} classes have fewer than {int(min_rows)}, too few rows to estimate the noise "
            f"transition matrix; no label was changed")

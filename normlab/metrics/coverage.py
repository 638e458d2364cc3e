"""Mode coverage: the entropy of the labels a classifier predicts for generated samples.

A generator that covers every class of a balanced K-class dataset makes a classifier
predict each label about equally often: the entropy of the predicted-label histogram
approaches ``log K`` (2.303 nats for 10 classes). A generator that collapses onto a
few modes gives a low entropy. It says nothing about sample quality (noise that the
classifier happens to spread over all labels scores high), so read it next to the
Frechet distance; compare it with the same statistic on real data, which is below
``log K`` when the classifier errs or the classes are imbalanced.

>>> round(label_entropy(np.full(10, 5)), 4)   # uniform over 10 labels: log 10
2.3026
>>> label_entropy(np.array([7, 0, 0]))
0.0
"""

from __future__ import annotations

import numpy as np


def label_entropy(histogram: np.ndarray) -> float:
    """Entropy in nats of the distribution given by a histogram of counts."""
    counts = np.asarray(histogram, np.float64)
    if counts.sum() <= 0:
        raise ValueError('label_entropy needs a histogram with at least one count')
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)) + 0.0)

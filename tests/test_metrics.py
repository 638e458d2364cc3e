"""normlab.metrics against closed forms: the Frechet distance, its streamed moments,
the label entropy."""

import numpy as np
import pytest
import scipy.linalg

from normlab.metrics import FeatureMoments, frechet_distance, label_entropy


def reference_frechet(x, y):
    """The textbook formula with scipy's general matrix square root."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root))


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)) @ rng.normal(size=(16, 16))
    m = FeatureMoments.of(x)
    assert frechet_distance(m, m) == 0.0
    direction = rng.normal(size=16)
    direction /= np.linalg.norm(direction)
    distances = [frechet_distance(m, FeatureMoments.of(x + s * direction)) for s in (0.5, 1, 2)]
    # A pure shift changes only the mean term: d^2 = ||shift||^2.
    np.testing.assert_allclose(distances, [0.25, 1.0, 4.0], rtol=1e-6)
    y = rng.normal(size=(3000, 16)) * 1.5 + 0.3
    np.testing.assert_allclose(
        frechet_distance(m, FeatureMoments.of(y)), reference_frechet(x, y), rtol=1e-6
    )


def test_feature_moments_stream_like_one_shot():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8))
    streamed = FeatureMoments()
    for chunk in np.array_split(x, 7):
        streamed.add(chunk.sum(0), chunk.T @ chunk, len(chunk))
    one_shot = FeatureMoments.of(x)
    np.testing.assert_allclose(streamed.mean, one_shot.mean)
    np.testing.assert_allclose(streamed.covariance, np.cov(x, rowvar=False))


def test_label_entropy_measures_mode_coverage():
    assert label_entropy(np.full(10, 7)) == pytest.approx(np.log(10))
    assert label_entropy(np.array([0, 12, 0])) == 0.0
    assert label_entropy(np.array([5, 5, 0, 0])) == pytest.approx(np.log(2))

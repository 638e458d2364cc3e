"""The Frechet distance between two feature distributions, each fitted by a Gaussian.

For Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)`` the squared 2-Wasserstein (Frechet)
distance is (Dowson & Landau 1982)::

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

Heusel et al. (2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium") apply it to Inception-v3 pool features of real and generated
images and call it FID. The formula is the same whatever network supplies the
features; the *number* is only comparable between evaluations that use the same
network, the same sample sizes and the same preprocessing. It is biased upwards by
finite samples (roughly by ``Tr(S)/n`` per set), so also report sample sizes.

``Tr((S1 S2)^(1/2))`` is computed without a non-symmetric matrix square root: with
``R = S1^(1/2)`` (symmetric, via `eigh`), ``S1 S2`` is similar to the symmetric PSD
``R S2 R``, so the trace is the sum of the square roots of its eigenvalues. This is
exact for PSD inputs and never produces the complex round-off of ``scipy.linalg.sqrtm``.

>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(1000, 4))
>>> m = FeatureMoments.of(x)
>>> frechet_distance(m, m)
0.0
>>> round(frechet_distance(m, FeatureMoments.of(x + 1.0)), 6)   # ||shift||^2 = 4
4.0
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class FeatureMoments:
    """Streaming first and second moments of feature vectors, in float64.

    Accumulate per-batch sums (``add(sum_f, sum_ffT, n)``; a jitted step can psum
    them across devices first) and read the Gaussian fit with `mean` / `covariance`.
    """

    count: float = 0.0
    total: np.ndarray | None = None  # sum of f, (D,)
    outer: np.ndarray | None = None  # sum of f f^T, (D, D)

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureMoments:
        """The moments of an ``(n, D)`` array of features."""
        f = np.asarray(features, np.float64)
        m = cls()
        m.add(f.sum(0), f.T @ f, len(f))
        return m

    def add(self, total, outer, count) -> None:
        total = np.asarray(total, np.float64)
        outer = np.asarray(outer, np.float64)
        if self.total is None:
            self.total, self.outer = np.zeros_like(total), np.zeros_like(outer)
        self.total += total
        self.outer += outer
        self.count += float(count)

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased (n - 1) sample covariance."""
        if self.count < 2:
            raise ValueError(f'a covariance needs at least 2 samples, got {self.count:g}')
        mu = self.mean
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return (cov + cov.T) / 2  # exact symmetry for eigh


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    eigval, eigvec = np.linalg.eigh(matrix)
    return (eigvec * np.sqrt(np.clip(eigval, 0, None))) @ eigvec.T


def frechet_distance(a: FeatureMoments, b: FeatureMoments) -> float:
    """Squared Frechet distance between Gaussian fits of two feature sets (>= 0)."""
    mu1, mu2 = a.mean, b.mean
    if mu1.shape != mu2.shape:
        raise ValueError(f'feature dimensions differ: {mu1.shape} vs {mu2.shape}')
    s1, s2 = a.covariance, b.covariance
    root = _sqrt_psd(s1)
    cross = np.linalg.eigvalsh(root @ s2 @ root)
    trace_sqrt = np.sum(np.sqrt(np.clip(cross, 0, None)))
    d2 = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    # Round-off can leave a tiny negative value for identical sets.
    scale = np.trace(s1) + np.trace(s2) + np.sum(mu1**2) + np.sum(mu2**2)
    return float(0.0 if d2 < 1e-10 * max(scale, 1.0) else d2)

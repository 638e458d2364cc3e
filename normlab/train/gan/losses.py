"""GAN losses, by name, as per-example terms on discriminator logits.

Notation as in Kurach et al. (2019, "A Large-Scale Study on Regularization and
Normalization in GANs"), with ``r = D(x)`` on real and ``f = D(G(z))`` on generated
examples (raw logits, no sigmoid):

* ``non_saturating`` (Goodfellow et al. 2014; DCGAN, Radford et al. 2016):
  D minimizes ``softplus(-r) + softplus(f)`` (binary cross-entropy, real = 1);
  G minimizes ``softplus(-f)`` = ``-log sigmoid(f)`` rather than the saturating
  ``log(1 - sigmoid(f))``, whose gradient vanishes exactly when D wins.
* ``hinge`` (Lim & Ye 2017; Miyato et al. 2018, SNGAN):
  D minimizes ``relu(1 - r) + relu(1 + f)``; G minimizes ``-f``.

At the start of training (D outputs ~0) the non-saturating D loss is
``2 log 2 = 1.386`` per example pair and the hinge D loss is 2.

Each loss maps logits to per-example terms; the train step sums them over real
examples and divides by the global batch, so every device's share adds up to the
global mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

Terms = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class GANLoss:
    """Per-example loss terms: D's on real and on fake logits, G's on fake logits."""

    d_real: Terms
    d_fake: Terms
    g_fake: Terms


LOSSES: dict[str, GANLoss] = {
    'non_saturating': GANLoss(
        d_real=lambda r: jax.nn.softplus(-r),
        d_fake=jax.nn.softplus,
        g_fake=lambda f: jax.nn.softplus(-f),
    ),
    'hinge': GANLoss(
        d_real=lambda r: jax.nn.relu(1.0 - r),
        d_fake=lambda f: jax.nn.relu(1.0 + f),
        g_fake=lambda f: -f,
    ),
}


def get_loss(name: str) -> GANLoss:
    if name not in LOSSES:
        raise ValueError(f'unknown GAN loss {name!r}; valid: {", ".join(LOSSES)}')
    return LOSSES[name]

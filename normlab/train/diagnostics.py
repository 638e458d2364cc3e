"""Training diagnostics computed inside the train step: per-layer gradient norms.

Deep plain networks fail by their gradients vanishing or exploding from layer to
layer (Santurkar et al. 2018; Bjorck et al. 2018); the global ``train/grad_norm``
hides where. With ``config.record_grad_norms`` the step also returns, for every
top-level entry of the params tree (a layer: ``dense1``, ``norm1``, ``head``,
``Conv_0`` ...), the L2 norm over all of that layer's gradient leaves::

    >>> layer_grad_norms({'dense1': {'kernel': 3 * ones(4), 'bias': zeros(1)}})
    {'train/grad_norm/dense1': 6.0}
"""

from __future__ import annotations

import jax
import optax

PREFIX = 'train/grad_norm/'


def layer_grad_norms(grads) -> dict[str, jax.Array]:
    """``{PREFIX + layer: ||grads[layer]||_2}`` for each top-level key of `grads`."""
    return {f'{PREFIX}{layer}': optax.global_norm(g) for layer, g in grads.items()}

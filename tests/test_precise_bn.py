"""Precise BatchNorm: population statistics recomputed after training."""

import flax.linen as nn
import jax
import numpy as np

from normlab import norms
from tests.norm_cases import KEY, rand


def test_precise_bn_averages_batch_statistics():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = nn.Dense(4)(x)
            return norms.BatchNorm(use_running_average=not train)(x)

    model = Net()
    batches = [rand((8, 3), seed=s, loc=s) for s in range(5)]
    v = model.init(KEY, batches[0], train=False)
    stats = norms.recompute_batch_stats(model, v, batches, train=True)
    h = [nn.Dense(4).apply({'params': v['params']['Dense_0']}, b) for b in batches]
    np.testing.assert_allclose(
        stats['BatchNorm_0']['mean'], np.mean([a.mean(0) for a in h], 0), rtol=1e-5
    )
    np.testing.assert_allclose(
        stats['BatchNorm_0']['var'], np.mean([a.var(0) for a in h], 0), rtol=1e-5
    )
    assert jax.tree.all(jax.tree.map(lambda a, b: a.shape == b.shape, stats, v['batch_stats']))

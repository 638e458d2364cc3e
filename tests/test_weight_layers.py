"""Weight standardization, spectral norm and weight norm."""

import flax.linen as nn
import numpy as np

from normlab import norms
from tests.norm_cases import KEY, rand


def test_weight_standardized_conv():
    x = rand((2, 6, 6, 3))
    for scaled in (False, True):
        conv = norms.WeightStandardizedConv(4, (3, 3), scaled=scaled)
        v = conv.init(KEY, x)
        assert set(v['params']) == ({'kernel', 'bias', 'gain'} if scaled else {'kernel', 'bias'})
        k = norms.standardize_kernel(
            v['params']['kernel'],
            epsilon=1e-4,
            scaled=scaled,
            gain=v['params'].get('gain'),
        )
        ref = nn.Conv(4, (3, 3)).apply({'params': {**v['params'], 'kernel': k}}, x)
        np.testing.assert_allclose(conv.apply(v, x), ref, atol=1e-5)
        fan_in = 27 if scaled else 1
        np.testing.assert_allclose(np.var(k, axis=(0, 1, 2)) * fan_in, 1.0, rtol=1e-2)


def test_spectral_norm_state_is_not_batch_stats():
    sn = norms.SpectralNorm(nn.Dense(5))
    x = rand((3, 4))
    v = sn.init(KEY, x, update_stats=True)
    assert set(v) == {'params', norms.SPECTRAL_STATS}
    _, s = sn.apply(v, x, update_stats=True, mutable=[norms.SPECTRAL_STATS])
    w = norms.WeightNorm(nn.Dense(5))
    assert set(w.init(KEY, x)) == {'params'}

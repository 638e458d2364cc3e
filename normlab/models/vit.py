"""Vision Transformers (Dosovitskiy et al. 2021) with the normalization as a free variable.

Images are cut into ``patch_size`` squares, embedded by one strided conv, given a class
token (``pool='token'``) and learned position embeddings, and passed through ``depth``
encoder blocks of multi-head self-attention and a GELU MLP (``mlp_ratio`` times wider),
each sublayer inside a residual connection. ``vit_ti16``, ``vit_s16`` and ``vit_b16`` are
the published sizes (``SIZES``); ``vit`` takes every option and defaults to a model that
trains on 8x8 digits or 28x28 MNIST on a CPU::

    model = models.create('vit', num_classes=10, norm=norms.make_norm('layer_norm'),
                          patch_size=2, norm_placement='peri', qk_norm=True)
    variables = model.init(jax.random.key(0), images, train=False)
    logits, state = model.apply(variables, images, train=True, mutable=['batch_stats'])

With LayerNorm and ``norm_placement='pre'`` (the ViT paper's) the parameter counts with a
1000-class head at 224x224 are the published ones: ViT-Ti/16 5,717,416, ViT-S/16
22,050,664, ViT-B/16 86,567,656 (tests/test_vit.py). The position embedding is sized
from the image the model is initialized on.

Where the norm sits (``norm_placement``), for a sublayer ``F`` (attention or MLP):

* ``'post'``: ``x = norm(x + F(x))``, the original Transformer (Vaswani et al. 2017); no
  final norm (the last block's output is already normalized);
* ``'pre'``: ``x = x + F(norm(x))``, ViT's (Xiong et al. 2020 show it trains without
  warm-up), plus a final norm before the head: the residual stream itself is never
  normalized and grows with depth;
* ``'peri'``: ``x = x + norm(F(norm(x)))``, Peri-LN (Kim et al. 2025, as in Gemma and
  OLMo 2): each sublayer's input and output are normalized, plus the final norm;
* ``'none'``: ``x = x + F(x)``; no norm on the residual path or before the head.

``qk_norm=True`` (Dehghani et al. 2023, ViT-22B) also normalizes each head's queries and
keys over the head dimension before their dot product, with the same norm (with any
placement, ``'none'`` included). With
LayerNorm or RMSNorm at unit scale, a query has norm at most ``sqrt(head_dim)``, so no
attention logit ``q.k / sqrt(head_dim)`` exceeds ``sqrt(head_dim)`` times the scales:
the logits cannot grow without bound, the instability Dehghani et al. and Wortsman et
al. (2023) observe at high learning rates.

Which axes each registered norm reduces here, on the ``(batch, tokens, features)``
residual stream (and on ``(batch, tokens, heads, head_dim)`` queries and keys, where the
head dimension is the feature axis and heads count as positions):

* ``layer_norm``, ``rms_norm``: each token over its features. The model binds
  ``reduction_axes=-1`` on every norm that takes it (``make_norm('layer_norm')`` alone
  reduces every non-batch axis, for conv feature maps);
* ``group_norm``: each token over each group of ``num_groups`` feature groups (likewise
  ``reduction_axes=-1``; ``num_groups`` must divide the width and, with ``qk_norm``, the
  head dimension);
* ``batch_norm``, ``batch_renorm``: each feature over batch x tokens (Yao et al. 2021,
  "Leveraging Batch Normalization for Vision Transformers"), running statistics per
  feature;
* ``instance_norm``, ``frn``: each example and feature over the tokens (the image-model
  definition, tokens taking the place of pixels);
* ``evonorm_b0``: batch variance over batch x tokens, instance variance over tokens;
  ``evonorm_s0``: each example over tokens and a group of features;
* ``dyt``, ``none``: elementwise; nothing is reduced.

Diagnostics: every block sows into ``intermediates``, per example, the RMS of the
residual stream after it (``residual_rms``, over tokens and features) and its
attention's largest logit (``max_logit``, over heads, queries and keys), recorded only
when the caller makes that collection mutable; `diagnostics` reduces them over the
batch and stacks them by layer::

    _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
    diagnostics(state['intermediates'])   # {'residual_rms': (depth,), 'max_logit': (depth,)}

Per-example values are what the classifier trainer's ``record_preactivations`` gathers
over the first eval batch: with it, every evaluation logs the 15/50/85th percentiles
over examples of each block's ``residual_rms`` and ``max_logit``.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from normlab.models.common import ModuleDef, as_logits, check_images

NORM_PLACEMENTS = ('post', 'pre', 'peri', 'none')
POOLS = ('token', 'mean')

# (width, depth, heads) of the published models; every one has mlp_ratio 4.
SIZES = {'Ti': (192, 12, 3), 'S': (384, 12, 6), 'B': (768, 12, 12)}

# Transformer weights as in the ViT paper's code: Xavier-uniform kernels.
_kernel_init = nn.initializers.xavier_uniform()


def per_token(norm: ModuleDef) -> ModuleDef:
    """`norm` with its statistics over the feature axis only, where it has a choice.

    Norms with ``reduction_axes`` (LayerNorm, RMSNorm, GroupNorm) get
    ``reduction_axes=-1``; the others' axes are fixed by their definition (see the
    module docstring).
    """
    cls = norm
    while isinstance(cls, functools.partial):
        cls = cls.func
    if dataclasses.is_dataclass(cls) and any(
        f.name == 'reduction_axes' for f in dataclasses.fields(cls)
    ):
        return functools.partial(norm, reduction_axes=-1)
    return norm


class Attention(nn.Module):
    """Multi-head self-attention; ``qk_norm`` normalizes queries and keys per head.

    ``norm`` is the bound norm factory, used only with ``qk_norm``.
    """

    num_heads: int
    norm: ModuleDef
    qk_norm: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f'width {width} is not divisible by num_heads={self.num_heads}')
        head_dim = width // self.num_heads
        dense = functools.partial(
            nn.DenseGeneral,
            features=(self.num_heads, head_dim),
            kernel_init=_kernel_init,
            dtype=self.dtype,
        )
        q, k, v = (dense(name=name)(x) for name in ('query', 'key', 'value'))
        if self.qk_norm:
            q = self.norm(name='query_norm')(q)
            k = self.norm(name='key_norm')(k)
        logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head_dim).astype(q.dtype)
        self.sow('intermediates', 'max_logit', jnp.max(logits, axis=(1, 2, 3)).astype(jnp.float32))
        weights = nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
        return nn.DenseGeneral(
            width, axis=(-2, -1), kernel_init=_kernel_init, dtype=self.dtype, name='out'
        )(out)


class MlpBlock(nn.Module):
    """Dense, GELU, dropout, Dense: the position-wise feed-forward sublayer."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        dense = functools.partial(nn.Dense, kernel_init=_kernel_init, dtype=self.dtype)
        h = nn.gelu(dense(self.mlp_dim, name='dense1')(x))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return dense(x.shape[-1], name='dense2')(h)


class EncoderBlock(nn.Module):
    """Attention then MLP, each a residual sublayer with norms where ``norm_placement``
    puts them: ``{sublayer}_norm_in`` on its input (pre, peri), ``{sublayer}_norm_out``
    on its output (peri), ``{sublayer}_norm`` after the residual add (post)."""

    norm: ModuleDef
    num_heads: int
    mlp_dim: int
    norm_placement: str = 'pre'
    qk_norm: bool = False
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        attention = Attention(
            self.num_heads, self.norm, self.qk_norm, dtype=self.dtype, name='attention'
        )
        mlp = MlpBlock(self.mlp_dim, self.dropout_rate, dtype=self.dtype, name='mlp')
        drop = nn.Dropout(self.dropout_rate)
        sublayers = {
            'attention': attention,
            'mlp': functools.partial(mlp, deterministic=deterministic),
        }
        for name, sublayer in sublayers.items():

            def branch(h, sublayer=sublayer):
                return drop(sublayer(h), deterministic=deterministic)

            if self.norm_placement == 'post':
                x = self.norm(name=f'{name}_norm')(x + branch(x))
            elif self.norm_placement == 'pre':
                x = x + branch(self.norm(name=f'{name}_norm_in')(x))
            elif self.norm_placement == 'peri':
                h = branch(self.norm(name=f'{name}_norm_in')(x))
                x = x + self.norm(name=f'{name}_norm_out')(h)
            else:
                x = x + branch(x)
        rms = jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), axis=(1, 2)))
        self.sow('intermediates', 'residual_rms', rms)
        return x


class ViT(nn.Module):
    """Vision Transformer classifier; see the module docstring.

    Attributes:
      num_classes: size of the logits.
      norm: normalization factory from ``normlab.norms.make_norm``.
      patch_size: side of the square patches; must divide the image sides.
      width: token features (the hidden size D).
      depth: encoder blocks.
      num_heads: attention heads; must divide `width`.
      mlp_ratio: MLP hidden size over `width`.
      pool: ``'token'`` (the class token's output, ViT) or ``'mean'`` (mean over
        tokens, no class token).
      norm_placement: ``'post'``, ``'pre'``, ``'peri'`` or ``'none'``.
      qk_norm: normalize queries and keys per head (ViT-22B).
      dropout_rate: dropout after the embedding, inside the MLP and on each branch
        (train mode only; needs ``rngs={'dropout': key}`` in ``apply``).
      dtype: compute dtype; logits are returned in float32.
    """

    num_classes: int
    norm: ModuleDef
    patch_size: int = 4
    width: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    pool: str = 'token'
    norm_placement: str = 'pre'
    qk_norm: bool = False
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(
                f'norm_placement must be one of {NORM_PLACEMENTS}, got {self.norm_placement!r}'
            )
        if self.pool not in POOLS:
            raise ValueError(f'pool must be one of {POOLS}, got {self.pool!r}')
        check_images(x, model='ViT', min_size=self.patch_size)
        p = self.patch_size
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(
                f'ViT(patch_size={p}) does not divide the image sides of an input of shape '
                f'{tuple(x.shape)}'
            )
        norm = functools.partial(
            per_token(self.norm), use_running_average=not train, dtype=self.dtype
        )

        x = nn.Conv(
            self.width, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, name='embedding'
        )(x)
        x = x.reshape(x.shape[0], -1, self.width)
        if self.pool == 'token':
            cls = self.param('cls', nn.initializers.zeros, (1, 1, self.width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
        # Sized from the input: 1 + (H / p) * (W / p) tokens with the class token.
        pos = self.param('pos_embedding', nn.initializers.normal(stddev=0.02), (1, *x.shape[1:]))
        x = (x + pos).astype(self.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        for i in range(self.depth):
            x = EncoderBlock(
                norm,
                self.num_heads,
                int(self.mlp_ratio * self.width),
                self.norm_placement,
                self.qk_norm,
                self.dropout_rate,
                dtype=self.dtype,
                name=f'block{i + 1}',
            )(x, deterministic=not train)
        if self.norm_placement in ('pre', 'peri'):
            x = norm(name='final_norm')(x)
        x = x[:, 0] if self.pool == 'token' else jnp.mean(x, axis=1)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
        return as_logits(x)


def diagnostics(intermediates) -> dict[str, jnp.ndarray]:
    """Over the batch, the RMS of the residual stream after each block and the largest
    attention logit in each, stacked in depth order."""
    blocks = sorted(
        (k for k in intermediates if k.startswith('block')), key=lambda k: int(k[len('block') :])
    )
    rms = [intermediates[b]['residual_rms'][0] for b in blocks]
    logits = [intermediates[b]['attention']['max_logit'][0] for b in blocks]
    return {
        'residual_rms': jnp.stack([jnp.sqrt(jnp.mean(jnp.square(r))) for r in rms]),
        'max_logit': jnp.stack([jnp.max(m) for m in logits]),
    }


def _published(size: str) -> ModuleDef:
    width, depth, heads = SIZES[size]
    return functools.partial(ViT, patch_size=16, width=width, depth=depth, num_heads=heads)


VARIANTS = {
    'vit': ViT,
    'vit_ti16': _published('Ti'),
    'vit_s16': _published('S'),
    'vit_b16': _published('B'),
}

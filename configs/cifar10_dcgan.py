"""DCGAN on CIFAR-10 (32x32x3): the standard unconditional GAN benchmark (Miyato et al.
2018; Kurach et al. 2019).

    tfds build cifar10   # once, on a machine with network
    python -m normlab.main --config=configs/cifar10_dcgan.py --workdir=runs/cifar10_dcgan

50,000 generator steps of 64 (Kurach et al.'s budget is 100k-200k). Not measured on
the development machine (no network for the dataset, 2 CPU cores); plan on a GPU.
Real images are not augmented: a GAN should learn the images, not their random
crops. The Frechet distance is measured in a normlab-trained CIFAR-10 classifier
(about 10,000 steps, cached), **not** Inception: do not compare it with published FIDs.
Arguments as in ``configs/digits_dcgan.py``; ``d_norm=spectral,loss=hinge`` gives
SNGAN's discriminator and loss.
"""

from normlab.config import gan_config, parse_arg, set_norms, shrink_gan_for_smoke


def get_config(arg=None):
    arg = parse_arg(
        arg,
        g_norm='batch_norm',
        d_norm='batch_norm',
        loss='non_saturating',
        conditional=False,
        smoke=False,
    )
    c = gan_config()
    c.dataset = 'cifar10'
    c.conditional = arg.conditional
    c.loss = arg.loss
    set_norms(c, arg.g_norm, arg.d_norm)
    c.generator.width = 64
    c.generator.latent_dim = 128
    c.generator.ema_decay = 0.9999
    c.discriminator.width = 64
    c.batch_size = 64
    c.num_train_steps = 50_000
    c.eval_every_steps = 10_000
    c.eval.num_samples = 10_000
    c.eval.num_real = 10_000
    c.log_every_steps = 500
    c.checkpoint_every_steps = 5000
    if arg.smoke:
        shrink_gan_for_smoke(c)
    return c

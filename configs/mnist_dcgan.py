"""DCGAN on MNIST (28x28x1), the setting of Radford et al. (2016) and of Kurach et al.
(2019)'s small-scale runs.

    tfds build mnist   # once, on a machine with network
    python -m normlab.main --config=configs/mnist_dcgan.py --workdir=runs/mnist_dcgan

20,000 generator steps of 64. Not measured on the development machine (no network
for the dataset, 2 CPU cores); expect a few minutes per thousand steps on one GPU
and hours on a laptop CPU. The feature classifier is trained once (3,000 steps) and
cached. Arguments as in ``configs/digits_dcgan.py``: ``g_norm``, ``d_norm`` (a norm
name or ``spectral``), ``loss``, ``conditional``, ``smoke``.
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
    c.dataset = 'mnist'
    c.conditional = arg.conditional
    c.loss = arg.loss
    set_norms(c, arg.g_norm, arg.d_norm)
    c.generator.width = 64
    c.generator.latent_dim = 100
    c.generator.ema_decay = 0.999
    c.discriminator.width = 64
    c.batch_size = 64
    c.num_train_steps = 20_000
    c.eval_every_steps = 5000
    c.eval.num_samples = 10_000
    c.eval.num_real = 10_000
    c.log_every_steps = 200
    c.checkpoint_every_steps = 2000
    if arg.smoke:
        shrink_gan_for_smoke(c)
    return c

"""The BatchNorm paper's MNIST MLP (Ioffe & Szegedy 2015, Sec. 4.1): 3x100 sigmoid.

    python -m normlab.main --config=configs/mnist_mlp.py --workdir=runs/mnist_mlp

Needs MNIST prepared (`tfds build mnist`); on this 2-core CPU about 3 min for
10 epochs at batch 60, ~2% test error with BatchNorm (the paper: 50k steps
reach ~1.5%). ``norm=none`` is the paper's baseline. ``dataset=mnist5k`` runs
the same MLP offline on the 5,000 real MNIST digits embedded in normlab
(4,000 train, 1,000 test):

    python -m normlab.main --config=configs/mnist_mlp.py:dataset=mnist5k --workdir=runs/m5k

Measured (seed 0, 660 steps, ~20 s wall on the shared 2-core CPU): 8.4% test
error with BatchNorm, 7.8% with ``norm=none``. ``dataset=digits`` runs it on the 8x8 digits;
``act=relu`` swaps the paper's sigmoids for ReLUs.
"""

from normlab.config import classifier_config, parse_arg, set_model, shrink_classifier_for_smoke


def get_config(arg=None):
    arg = parse_arg(
        arg, norm='batch_norm', batch_size=60, dataset='mnist', act='sigmoid', smoke=False
    )
    c = classifier_config()
    c.dataset = arg.dataset
    set_model(c, 'mlp', widths=(100, 100, 100), act=arg.act)
    c.norm.num_groups = 10  # divides 100
    c.norm.name = arg.norm
    c.batch_size = arg.batch_size
    c.base_batch_size = 60
    c.num_epochs = 10.0
    c.learning_rate = 0.1
    c.weight_decay = 0.0
    c.augment = False
    c.eval_batch_size = 1000 if arg.dataset != 'digits' else 360
    c.record_preactivations = True
    if arg.smoke:
        shrink_classifier_for_smoke(c)  # the paper's 3x100 MLP is small already
    return c

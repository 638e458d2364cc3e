"""A small CNN on MNIST (28x28): conv-norm-ReLU stages, max pooling.

    python -m normlab.main --config=configs/mnist_cnn.py --workdir=runs/mnist_cnn

Needs MNIST prepared (`tfds build mnist`); about 10 min on a 2-core CPU for
5 epochs, ~0.6% test error with BatchNorm.
"""

from normlab.config import classifier_config, parse_arg, set_model, shrink_classifier_for_smoke


def get_config(arg=None):
    arg = parse_arg(arg, norm='batch_norm', batch_size=128, smoke=False)
    c = classifier_config()
    c.dataset = 'mnist'
    set_model(c, 'cnn', widths=(32, 64, 128), pool='max')
    c.norm.name = arg.norm
    c.batch_size = arg.batch_size
    c.num_epochs = 5.0
    c.learning_rate = 0.1
    c.augment = False
    c.eval_batch_size = 1000
    if arg.smoke:
        shrink_classifier_for_smoke(c)
        c.model_options.widths = (8, 16)
    return c

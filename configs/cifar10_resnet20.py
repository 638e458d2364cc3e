"""CIFAR-10 ResNet-20 (He et al. 2016, Sec. 4.2): identity shortcuts, 164 epochs.

    python -m normlab.main --config=configs/cifar10_resnet20.py --workdir=runs/c10_r20

A GPU job: the paper's schedule (batch 128, lr 0.1 dropped 10x at 50% and 75%,
weight decay 1e-4, crop+flip augmentation) reaches ~8.75% test error
(the paper's number). Needs CIFAR-10 prepared (`tfds build cifar10`).
"""

from normlab.config import classifier_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, norm='batch_norm', batch_size=128, smoke=False)
    c = classifier_config()
    c.dataset = 'cifar10'
    c.model = 'resnet20'
    c.norm.name = arg.norm
    c.norm.num_groups = 16 if arg.norm != 'evonorm_s0' else 8
    c.batch_size = arg.batch_size
    c.num_epochs = 164.0
    c.learning_rate = 0.1
    c.schedule = 'step'
    c.step_boundaries = (0.5, 0.75)
    c.weight_decay = 1e-4
    c.nesterov = False
    c.eval_batch_size = 1000
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2000
    c.xla_cpu_fusion = False  # 1.1-1.3x faster on CPU (BENCHMARKS.md); GPU/TPU unaffected
    if arg.smoke:
        c.model_options = {'width': 4}
        c.norm.num_groups = 4
        c.num_train_steps = 3
        c.log_every_steps = 1
        c.checkpoint_every_steps = 2
        c.eval_every_steps = None
        c.eval_batch_size = 100
    return c

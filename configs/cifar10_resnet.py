"""CIFAR-10 ResNets (He et al. 2016, Sec. 4.2): depth 6n + 2, identity shortcuts, 164 epochs.

    python -m normlab.main --config=configs/cifar10_resnet.py --workdir=runs/c10_r20
    python -m normlab.main --config=configs/cifar10_resnet.py:depth=56 --workdir=runs/c10_r56

A GPU job: the paper's schedule (batch 128, lr 0.1 dropped 10x at 50% and 75%,
weight decay 1e-4, crop+flip augmentation) reaches ~8.75% test error with ResNet-20
and ~6.97% with ResNet-56 (the paper's numbers). Needs CIFAR-10 prepared
(`tfds build cifar10`). Arguments: ``depth`` (20, 32, 44, 56 or 110),
``norm=<make_norm name>``, ``batch_size=<int>``, ``smoke=True`` (a few steps, for tests).
"""

from normlab.config import classifier_config, parse_arg, set_model, shrink_classifier_for_smoke

DEPTHS = (20, 32, 44, 56, 110)


def get_config(arg=None):
    arg = parse_arg(arg, depth=20, norm='batch_norm', batch_size=128, smoke=False)
    if arg.depth not in DEPTHS:
        raise ValueError(f'config argument depth={arg.depth} must be one of {DEPTHS}')
    c = classifier_config()
    c.dataset = 'cifar10'
    set_model(c, f'resnet{arg.depth}')
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
        shrink_classifier_for_smoke(c)
        c.model_options.width = 4
    return c

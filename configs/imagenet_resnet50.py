"""ImageNet ResNet-50 v1.5, the flax/Goyal et al. recipe: 90 epochs, batch 1024.

    python -m normlab.main --config=configs/imagenet_resnet50.py --workdir=runs/in_r50

A multi-accelerator job (~76% top-1 on 8 GPUs/TPU cores in about a day).
Needs imagenet2012 prepared by hand (see the error message of a first run).
lr 0.1 per 256 examples scaled linearly, 5 warmup epochs, cosine decay,
zero-initialized last BN scale in each residual block, weight decay 1e-4.
"""

from normlab.config import classifier_config, parse_arg, set_model, shrink_classifier_for_smoke


def get_config(arg=None):
    arg = parse_arg(arg, norm='batch_norm', batch_size=1024, smoke=False)
    c = classifier_config()
    c.dataset = 'imagenet2012'
    set_model(c, 'resnet50', zero_init_last_norm=True)
    c.norm.name = arg.norm
    c.norm.num_groups = 32
    c.batch_size = arg.batch_size
    c.num_epochs = 90.0
    c.learning_rate = 0.1
    c.base_batch_size = 256
    c.warmup_epochs = 5.0
    c.weight_decay = 1e-4
    c.nesterov = True
    c.dtype = 'bfloat16'
    c.eval_batch_size = 1000
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2500
    c.log_every_steps = 100
    if arg.smoke:
        shrink_classifier_for_smoke(c)
        c.model_options.width = 8
    return c

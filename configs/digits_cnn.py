"""A small CNN on the embedded 8x8 `digits` dataset: runs anywhere, offline.

    python -m normlab.main --config=configs/digits_cnn.py --workdir=runs/digits_cnn

About 30 s on a 2-core laptop CPU; BatchNorm reaches ~1-2% test error
(360 test digits). Arguments: ``norm=<make_norm name>``, ``batch_size=<int>``,
``smoke=True`` (a few steps, for tests), e.g.
``--config=configs/digits_cnn.py:norm=group_norm,batch_size=16``.
"""

from normlab.config import classifier_config, parse_arg, set_model, shrink_classifier_for_smoke


def get_config(arg=None):
    arg = parse_arg(arg, norm='batch_norm', batch_size=32, smoke=False)
    c = classifier_config()
    c.dataset = 'digits'
    set_model(c, 'cnn', widths=(32, 64, 128), pool='max')
    c.norm.name = arg.norm
    c.norm.num_groups = 8
    c.batch_size = arg.batch_size
    c.num_epochs = 15.0
    c.learning_rate = 0.05
    c.base_batch_size = 32
    c.weight_decay = 5e-4
    c.eval_batch_size = 360
    c.log_every_steps = 50
    c.checkpoint_every_steps = 200
    if arg.smoke:
        shrink_classifier_for_smoke(c)
        c.model_options.widths = (8, 16)
    return c

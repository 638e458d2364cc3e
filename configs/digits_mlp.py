"""The 3x100 MLP on the embedded 8x8 `digits` dataset: runs anywhere, offline.

    python -m normlab.main --config=configs/digits_mlp.py --workdir=runs/digits_mlp

About 10 s on a 2-core CPU at the default batch of 32; BatchNorm reaches ~2% test
error (360 test digits), as do GroupNorm and LayerNorm. Arguments:
``norm=<make_norm name>``, ``batch_size=<int>``, ``act=relu|sigmoid|...``,
``smoke=True`` (a few steps, for tests), e.g.
``--config=configs/digits_mlp.py:norm=group_norm,batch_size=4``.

An MLP's norm sees one value per example and feature: BatchNorm's statistics come
from the batch alone (no spatial positions to pool, unlike the CNN), so this is the
model on which BatchNorm visibly degrades at tiny batches. ``num_groups`` is 10
because it must divide the 100 hidden units; ``instance_norm`` is degenerate here
(each scalar normalized by itself).
"""

from normlab.config import classifier_config, parse_arg, set_model, shrink_classifier_for_smoke


def get_config(arg=None):
    arg = parse_arg(arg, norm='batch_norm', batch_size=32, act='relu', smoke=False)
    c = classifier_config()
    c.dataset = 'digits'
    set_model(c, 'mlp', widths=(100, 100, 100), act=arg.act)
    c.norm.name = arg.norm
    c.norm.num_groups = 10
    c.batch_size = arg.batch_size
    c.num_epochs = 10.0
    c.learning_rate = 0.05
    c.base_batch_size = 32
    c.weight_decay = 5e-4
    c.eval_batch_size = 360
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    if arg.smoke:
        shrink_classifier_for_smoke(c)
        c.model_options.widths = (20, 20)
    return c

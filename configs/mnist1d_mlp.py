"""The MNIST-1D paper's MLP on the embedded `mnist1d` (Greydanus & Kobak 2024): offline.

    python -m normlab.main --config=configs/mnist1d_mlp.py --workdir=runs/mnist1d_mlp

Their baseline MLP's training settings (hidden size 256, Adam at 1e-2, batch
100, 8,000 steps = 200 epochs of the 4,000 training signals): here 40 inputs, two
hidden layers of 256 ReLU units, no normalization, a constant learning rate.
The paper reports 68% test accuracy for it (32% error); measured here (seed 0,
38 s wall on the shared 2-core CPU): 28.4% test error, i.e. 71.6% accuracy. With
``norm=batch_norm`` (before each ReLU): 27.4% (45 s).
Arguments: ``norm=<make_norm name>``, ``dataset=mnist1d|mnist1d/50k``,
``steps=<int>``, ``smoke=True`` (a few steps, for tests).
"""

from normlab.config import classifier_config, parse_arg, set_model, shrink_classifier_for_smoke


def get_config(arg=None):
    arg = parse_arg(arg, norm='none', dataset='mnist1d', steps=8000, smoke=False)
    c = classifier_config()
    c.dataset = arg.dataset
    set_model(c, 'mlp', widths=(256, 256), act='relu')
    c.norm.name = arg.norm
    c.norm.num_groups = 16  # divides 256
    c.batch_size = 100
    c.base_batch_size = 100
    c.num_train_steps = arg.steps
    c.optimizer = 'adam'
    c.learning_rate = 1e-2
    c.schedule = 'constant'
    c.weight_decay = 0.0
    c.augment = False
    c.eval_batch_size = 1000
    c.eval_every_steps = 1000
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    if arg.smoke:
        shrink_classifier_for_smoke(c)
        c.model_options.widths = (16, 16)  # a multiple of the smoke num_groups
    return c

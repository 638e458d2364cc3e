"""A small Vision Transformer on the embedded 8x8 `digits` dataset: runs anywhere, offline.

    python -m normlab.main --config=configs/digits_vit.py --workdir=runs/digits_vit

About 1 min on the 2-core CPU shared with other jobs (load ~7: 46 s of run, 21 s of it
compiling; 660 steps, 30 epochs at batch 64); LayerNorm, pre-LN, reaches 4.2% test
error (360 test digits; 5.3% with the training loop before scan-fused steps).

Arguments: ``norm=<make_norm name>`` (default layer_norm), ``placement=post|pre|peri|none``,
``qk_norm=True|False``, ``patch_size=2|4``, ``batch_size=<int>``, ``smoke=True`` (a few
steps, for tests), e.g. ``--config=configs/digits_vit.py:norm=dyt,placement=peri``.

The model: 2x2 patches (16 tokens and a class token), width 64, 4 blocks of 4 heads,
MLP ratio 4 (~200k parameters); AdamW with a linear warm-up and a cosine decay, weight
decay on the kernels only. ``num_groups`` is 8 so that it divides the width and the
head dimension (16) for ``group_norm`` and ``evonorm_s0``.
"""

from normlab.config import classifier_config, parse_arg, set_model, shrink_classifier_for_smoke


def get_config(arg=None):
    arg = parse_arg(
        arg,
        norm='layer_norm',
        placement='pre',
        qk_norm=False,
        patch_size=2,
        batch_size=64,
        smoke=False,
    )
    c = classifier_config()
    c.dataset = 'digits'
    set_model(
        c,
        'vit',
        patch_size=arg.patch_size,
        width=64,
        depth=4,
        num_heads=4,
        mlp_ratio=4.0,
        pool='token',
        norm_placement=arg.placement,
        qk_norm=arg.qk_norm,
    )
    c.norm.name = arg.norm
    c.norm.num_groups = 8
    c.batch_size = arg.batch_size
    c.num_epochs = 30.0
    c.optimizer = 'adamw'
    c.learning_rate = 3e-3
    c.lr_scaling = 'none'
    c.warmup_epochs = 3.0
    c.weight_decay = 1e-4
    c.eval_batch_size = 360
    c.log_every_steps = 100
    # The patch embedding makes the trainer see a convolutional model (one step per call
    # on CPU); the ViT's step is mostly matmuls and gains from the scan: 31 s against 43 s
    # for the same 220-step run (width 32, depth 2; load ~9).
    c.steps_per_call = 100
    c.checkpoint_every_steps = 1000
    if arg.smoke:
        shrink_classifier_for_smoke(c)
        c.model_options.width = 16
        c.model_options.depth = 2
        c.model_options.num_heads = 2
        c.norm.num_groups = 2
        c.warmup_epochs = 0.0
        c.steps_per_call = 2
    return c

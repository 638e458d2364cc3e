"""CIFAR ResNets of He et al. 2016 (Section 4.2): resnet20/32/44/56/110 and their v2 variants.

The network is a 3x3 conv with 16 filters, then three stages of ``n`` basic blocks with
16, 32 and 64 filters (depth ``6n + 2``), the last two starting with a stride-2 block,
then global average pooling and a linear classifier. The paper's CIFAR experiments use
identity shortcuts everywhere, zero-padding the new channels when the width doubles
("option A", no parameters): with BatchNorm that gives resnet20 269,722 parameters.
``shortcut='projection'`` uses a 1x1 conv + norm instead ("option B").

The pre-activation variants (``preact_resnet20`` ...) follow He et al., "Identity
Mappings in Deep Residual Networks" (ECCV 2016): see ``normlab.models.resnet``.

They are ``normlab.models.resnet.ResNet`` with the CIFAR stem, a width of 16 and
identity shortcuts: only those differ from the ImageNet family. The total stride is 4,
so any input of at least 4x4 works (32x32 CIFAR, 28x28 MNIST, 8x8 digits ...)::

    model = models.create("resnet20", num_classes=10, norm=norms.make_norm("batch_norm"))
    variables = model.init(jax.random.key(0), images, train=False)
    logits, state = model.apply(variables, images, train=True, mutable=["batch_stats"])
"""

import functools

from normlab.models.resnet import PreActResNet, ResNet

CifarResNet = functools.partial(ResNet, stem='cifar', width=16, shortcut='identity')
PreActCifarResNet = functools.partial(PreActResNet, stem='cifar', width=16, shortcut='identity')

VARIANTS = {}
for _n in (3, 5, 7, 9, 18):
    VARIANTS[f'resnet{6 * _n + 2}'] = functools.partial(CifarResNet, stage_sizes=(_n,) * 3)
    VARIANTS[f'preact_resnet{6 * _n + 2}'] = functools.partial(
        PreActCifarResNet, stage_sizes=(_n,) * 3
    )
del _n

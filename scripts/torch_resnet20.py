"""Reference PyTorch CPU ResNet-20 for the throughput benchmark (never imported by normlab).

The same network as ``normlab.models.create('resnet20', ...)`` with BatchNorm: a 3x3
stem conv with 16 filters, three stages of three basic blocks (16, 32, 64 filters),
parameter-free zero-padded identity shortcuts ("option A", He et al. 2016), global
average pooling and a linear head: 269,722 parameters. It trains with SGD + momentum
in channels-last memory format, the fast layout of PyTorch's CPU (oneDNN) kernels, with
the optimizer of ``configs/cifar10_resnet.py``.

    python -m scripts.torch_resnet20 --batch_size=128 --steps=20
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # zero-init last norm, as normlab's resnet20
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.pad))
        return F.relu(shortcut + y)


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10, blocks: int = 3, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i in range(3):
            cout = width * 2**i
            for j in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.head(x.mean((2, 3)))


def make_train_step(model: nn.Module, lr: float = 0.1, momentum: float = 0.9, wd: float = 1e-4):
    # configs/cifar10_resnet.py: SGD, momentum 0.9 (not Nesterov), weight decay 1e-4.
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)

    def step(images, labels):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        return loss

    return step


def setup(batch_size: int, seed: int = 0):
    """A channels-last model in train mode, its train step and one random CIFAR batch."""
    torch.manual_seed(seed)
    model = ResNet20().to(memory_format=torch.channels_last).train()
    images = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,))
    return model, make_train_step(model), images, labels


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch_size', type=int, default=128)
    parser.add_argument('--steps', type=int, default=20)
    args = parser.parse_args()
    model, step, images, labels = setup(args.batch_size)
    step(images, labels)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step(images, labels)
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    print(
        f'torch {torch.__version__} threads={torch.get_num_threads()} params={num_params(model)} '
        f'step {1e3 * median:.1f} ms, {args.batch_size / median:.0f} examples/s'
    )


if __name__ == '__main__':
    main()

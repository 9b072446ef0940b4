"""ResNets: ResNet-18 with the CIFAR stem (the ResNet of the CoUn paper's CIFAR and TinyImageNet
tables), and ResNet-18/50 with the ImageNet stem (:class:`ImageNetResNet`).

The stem is one 3x3 convolution at stride 1 (no 7x7 stride-2 convolution, no max-pool), so a 32x32
image keeps its resolution through the first stage; then four stages of two BasicBlocks each, with
widths 64, 128, 256, 512 and stride 2 at the start of stages 2-4 (a 1x1 convolution + BN on the
shortcut where the shape changes), global average pooling to 512 features and a linear head.
11.17 M parameters for 10 classes; 1.111 GFLOPs per 32x32 image (multiply-add = 2 FLOPs, as
:func:`coun_fast.models.flops.forward_flops` counts), exactly 4x the convolution FLOPs at 64x64.
Any input size works (global pooling); every stage halves it, so 8x8 images end at 1x1.
"""

from __future__ import annotations

from torch import Tensor, nn

from coun_fast.models.base import ImageClassifier, check_num_classes, check_positive_int, init_conv_bn

WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """A block's shortcut: the identity, or a strided 1x1 conv + BN where the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or a strided 1x1 conv + BN when the stride or the width changes.
    """

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class _ResNet(ImageClassifier):
    """What every ResNet here shares after its stem: four stages of ``block`` (widths 64, 128,
    256, 512 times the block's expansion; stride 2 at the start of stages 2-4), global average
    pooling, the linear head ``fc``; the stem convolution ``conv1`` is ``first_layer()``."""

    def _check_arguments(self, num_classes: int, in_chans: int, zero_init_residual: bool) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.in_chans = check_positive_int(in_chans, "in_chans")
        if not isinstance(zero_init_residual, bool):
            raise ValueError(f"zero_init_residual must be a bool; got {zero_init_residual!r}")

    def _build_stages(self, block: type[nn.Module], blocks_per_stage: tuple[int, ...]) -> None:
        stages, channels = [], WIDTHS[0]
        for index, (width, blocks) in enumerate(zip(WIDTHS, blocks_per_stage)):
            layers = []
            for number in range(blocks):
                layers.append(block(channels, width, 2 if index > 0 and number == 0 else 1))
                channels = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.fc = nn.Linear(channels, self.num_classes)

    def _initialize(self, zero_init_residual: bool) -> None:
        """Kaiming conv weights; with ``zero_init_residual`` every block's last BN starts at 0."""
        init_conv_bn(self)
        if zero_init_residual:
            for block in self.modules():
                if isinstance(block, (BasicBlock, Bottleneck)):
                    nn.init.zeros_((block.bn3 if isinstance(block, Bottleneck) else block.bn2).weight)

    def _pooled(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits (B, num_classes) from features (B, num_features)."""
        return self.fc(features)

    def first_layer(self) -> nn.Conv2d:
        return self.conv1

    def get_classifier(self) -> nn.Linear:
        return self.fc


class ResNet18(_ResNet):
    """ResNet-18, CIFAR stem. ``forward_features``: (B, in_chans, H, W) -> (B, 512).

    Args:
        num_classes: an int >= 2, the width of the linear head ``fc``.
        in_chans: input channels (3 for RGB).
        zero_init_residual: start every block's last BN at weight 0, so each block begins as the
            identity (a common trick for large-batch training; off by default, as in the paper's setup).

    ``first_layer()`` is the stem convolution ``conv1`` (parameter index 0, what NoT negates).
    """

    def __init__(self, num_classes: int, in_chans: int = 3, zero_init_residual: bool = False) -> None:
        super().__init__()
        self._check_arguments(num_classes, in_chans, zero_init_residual)
        self.conv1 = _conv3x3(self.in_chans, WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self._build_stages(BasicBlock, BLOCKS_PER_STAGE)
        self._initialize(zero_init_residual)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled 512-d features of images ``x`` (B, in_chans, H, W)."""
        self.check_images(x)
        return self._pooled(self.relu(self.bn1(self.conv1(x))))


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 (reduce), 3x3 (stride here, as timm and torchvision: "ResNet v1.5"),
    1x1 (expand x4) conv-BN layers, ``relu(bn3(conv3(...)) + shortcut(x))``; the shortcut is the
    identity or a strided 1x1 conv + BN where the shape changes."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}


class ImageNetResNet(_ResNet):
    """ResNet-18 or ResNet-50 with the ImageNet stem (He et al. 2016; timm's ``resnet18`` and
    ``resnet50``, torchvision's layout): a 7x7 stride-2 convolution, BN, ReLU and a 3x3 stride-2
    max-pool, then four stages (widths 64, 128, 256, 512; BasicBlocks 2-2-2-2 for 18, Bottlenecks
    3-4-6-3 of expansion 4 for 50) with stride 2 at the start of stages 2-4, global average
    pooling (512 or 2048 features) and a linear head. 11.69 M and 25.56 M parameters for 1000
    classes; 3.63 and 8.18 GFLOPs per 224x224 image (multiply-add = 2 FLOPs). A 224x224 image ends
    at 7x7; any size works (global pooling).

    Args:
        num_classes: an int >= 2, the width of the linear head ``fc``.
        depth: 18 or 50.
        in_chans: input channels (3 for RGB).
        zero_init_residual: start every block's last BN at weight 0 (each block begins as the identity).

    ``first_layer()`` is the stem convolution ``conv1``.
    """

    def __init__(self, num_classes: int, depth: int = 18, in_chans: int = 3, zero_init_residual: bool = False) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}; got {depth!r}")
        self._check_arguments(num_classes, in_chans, zero_init_residual)
        self.depth = depth
        self.conv1 = nn.Conv2d(self.in_chans, WIDTHS[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._build_stages(*DEPTHS[depth])
        self._initialize(zero_init_residual)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features (B, 512 or 2048) of images ``x`` (B, in_chans, H, W)."""
        self.check_images(x)
        return self._pooled(self.maxpool(self.relu(self.bn1(self.conv1(x)))))


def resnet18_imagenet(num_classes: int, in_chans: int = 3, zero_init_residual: bool = False) -> ImageNetResNet:
    """ResNet-18 with the ImageNet stem (see :class:`ImageNetResNet`)."""
    return ImageNetResNet(num_classes, 18, in_chans, zero_init_residual)


def resnet50_imagenet(num_classes: int, in_chans: int = 3, zero_init_residual: bool = False) -> ImageNetResNet:
    """ResNet-50 with the ImageNet stem (see :class:`ImageNetResNet`)."""
    return ImageNetResNet(num_classes, 50, in_chans, zero_init_residual)

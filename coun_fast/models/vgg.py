"""VGG-16 with batch norm and a 1024-d encoder head: the VGG of the CoUn paper's CIFAR-100 tables.

Thirteen 3x3 conv-BN-ReLU layers in the VGG-16 pattern 64,64,M,128,128,M,256x3,M,512x3,M,512x3,M
(M = 2x2 max-pool, stride 2), then global average pooling to 512 values, then the encoder head
``Linear(512, 1024) + ReLU``; its 1024-d output is the penultimate feature ``f`` that
``forward_features`` returns. ``forward_head`` applies dropout (``drop_rate``, 0 by default) and the
linear classifier ``Linear(1024, num_classes)``.

Why this head: the paper says only "VGG-16 with a 1024-dimensional encoder head". One hidden layer
of 1024 units is the smallest head that makes the penultimate feature 1024-d. Dropout sits in
``forward_head`` (as timm does), so the features CoUn contrasts are never dropped out; it defaults
to 0 because the paper's recipe names no dropout. Global average pooling replaces a plain flatten:
for 32x32 images the last max-pool leaves 512x1x1, so the two agree there, and larger images
(TinyImageNet's 64x64) work too. Images must be at least 32x32 (five 2x poolings).

FLOPs: 0.6275 GFLOPs per 32x32 image for 10 classes (0.6276 for 100), about 1.0% below the
paper's ~0.634 GFLOPs (reconstructed from its PFLOP figures). About 0.15% of that gap is the BN,
ReLU and pooling work that :func:`coun_fast.models.flops.forward_flops` does not count; the rest
would need a larger head (the paper's head is unspecified), e.g. Linear(2048, 1024) on an unpooled
512x2x2 map plus a second 1024-wide layer, which this module does not guess at.
"""

from __future__ import annotations

from torch import Tensor, nn

from coun_fast.models.base import (ImageClassifier, check_num_classes, check_positive_int, check_probability,
                                   init_conv_bn)

VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                       512, 512, 512, "M")
"""Output widths of the 13 conv-BN-ReLU layers; "M" is a 2x2 max-pool with stride 2."""


def _conv_stack(in_chans: int, layout: tuple[int | str, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_chans
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1, bias=False),
                       nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers)


class VGG16BN(ImageClassifier):
    """VGG-16-BN with a 1024-d encoder head. ``forward_features``: (B, in_chans, H, W) -> (B, 1024).

    Args:
        num_classes: an int >= 2, the width of the classifier ``head``.
        in_chans: input channels (3 for RGB).
        hidden_dim: width of the encoder head, i.e. ``num_features`` (1024 as in the paper).
        drop_rate: dropout probability before the classifier, in [0, 1) (0 by default).

    Images must be at least 32x32. ``first_layer()`` is the first convolution (parameter index 0,
    what NoT negates).
    """

    min_input_size = 32

    def __init__(self, num_classes: int, in_chans: int = 3, hidden_dim: int = 1024, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.in_chans = check_positive_int(in_chans, "in_chans")
        self.num_features = check_positive_int(hidden_dim, "hidden_dim")
        self.drop_rate = check_probability(drop_rate, "drop_rate")
        self.features = _conv_stack(self.in_chans, VGG16_LAYOUT)
        self.pool = nn.AdaptiveAvgPool2d(1)
        conv_width = [item for item in VGG16_LAYOUT if item != "M"][-1]
        self.pre_logits = nn.Sequential(nn.Linear(int(conv_width), self.num_features), nn.ReLU(inplace=True))
        self.head_drop = nn.Dropout(self.drop_rate)
        self.head = nn.Linear(self.num_features, self.num_classes)
        init_conv_bn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The encoder head's 1024-d output for images ``x`` (B, in_chans, H >= 32, W >= 32)."""
        self.check_images(x)
        return self.pre_logits(self.pool(self.features(x)).flatten(1))

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits (B, num_classes) from features (B, hidden_dim): dropout, then the linear classifier."""
        return self.head(self.head_drop(features))

    def first_layer(self) -> nn.Conv2d:
        return self.features[0]

    def get_classifier(self) -> nn.Linear:
        return self.head

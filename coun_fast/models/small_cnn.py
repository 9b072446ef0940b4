"""A small CNN for demos and tests on a CPU: scikit-learn's digits at 16x16 or 32x32 train in seconds.

Three conv-BN-ReLU blocks (3x3 convolutions, widths 32, 64, 128 by default), a 2x2 max-pool after
each block but the last, global average pooling to ``widths[-1]`` features and a linear head.
About 95 k parameters and 0.021 GFLOPs per 32x32 image (0.005 at 16x16) with the default widths.
"""

from __future__ import annotations

from torch import Tensor, nn

from coun_fast.models.base import ImageClassifier, check_num_classes, check_positive_int, init_conv_bn


class SmallCNN(ImageClassifier):
    """Small CNN. ``forward_features``: (B, in_chans, H, W) -> (B, widths[-1]).

    Args:
        num_classes: an int >= 2.
        in_chans: input channels (3 for RGB; the package's digits are grey repeated over 3 channels).
        widths: output channels of the conv blocks, a non-empty sequence of positive ints
            (one 2x max-pool between consecutive blocks; images need ``2 ** (len(widths) - 1)`` pixels a side).

    ``first_layer()`` is the first convolution.
    """

    def __init__(self, num_classes: int, in_chans: int = 3, widths: tuple[int, ...] | list[int] = (32, 64, 128)) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.in_chans = check_positive_int(in_chans, "in_chans")
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or len(widths) == 0:
            raise ValueError(f"widths must be a non-empty sequence of positive ints; got {widths!r}")
        self.widths = tuple(check_positive_int(w, "each entry of widths") for w in widths)
        self.min_input_size = 2 ** (len(self.widths) - 1)
        layers: list[nn.Module] = []
        channels = self.in_chans
        for index, width in enumerate(self.widths):
            if index:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.head = nn.Linear(channels, self.num_classes)
        init_conv_bn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features (B, widths[-1]) of images ``x`` (B, in_chans, H, W)."""
        self.check_images(x)
        return self.pool(self.features(x)).flatten(1)

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits (B, num_classes) from features (B, widths[-1])."""
        return self.head(features)

    def first_layer(self) -> nn.Conv2d:
        return self.features[0]

    def get_classifier(self) -> nn.Linear:
        return self.head

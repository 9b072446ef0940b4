"""Small timm-style models for tests of the training loop and the methods."""

from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    """A timm-style classifier small enough for many test runs (BN and dropout included)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.1))
        self.head = nn.Linear(32, num_classes)
        self.num_features, self.num_classes = 32, num_classes

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, f):
        return self.head(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

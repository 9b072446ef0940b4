"""Tiny data, a split and a training configuration shared by the tests of the unlearning methods
(import the fixtures ``data`` and ``split`` into a test module to use them)."""

from __future__ import annotations

import numpy as np
import pytest

from coun_fast.data.embedded import synthetic
from coun_fast.data.splits import random_split
from coun_fast.train import TrainConfig
from coun_fast.unlearn.base import ForgetData


@pytest.fixture(scope="module")
def data():
    return synthetic(num_classes=4, train_per_class=20, test_per_class=4, image_size=8, seed=0)


@pytest.fixture(scope="module")
def split(data):
    return random_split(len(data.train), 0.25, seed=0)


def config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=1, batch_size=16, lr=0.01, schedule="cosine", min_lr=1e-4, device="cpu",
                       progress=False, augment_backend="cpu")
    return base.replace(**changes)


def forget_data(data, split) -> ForgetData:
    return ForgetData(data.train, np.asarray(split.retain), data.train.normalization, np.asarray(split.forget))

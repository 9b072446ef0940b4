"""The pieces methods are built from: fit's start_epoch hook and side-image counters, the CL
plug-in on mixed and forget-only loops, batch streams, Plan validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coun_fast.data.embedded import synthetic
from coun_fast.data.loader import Batch
from coun_fast.functional import cross_view_info_nce
from coun_fast.train import CrossEntropy, TrainConfig, fit
from coun_fast.unlearn.base import BatchStream, Plan, is_member
from coun_fast.unlearn.cl_plugin import WithCL
from nets import TinyNet


@pytest.fixture(scope="module")
def data():
    return synthetic(num_classes=4, train_per_class=10, test_per_class=2, image_size=8, seed=0)


def config(**changes):
    base = dict(epochs=2, batch_size=8, lr=0.01, device="cpu", progress=False, augment_backend="cpu")
    return TrainConfig(**{**base, **changes})


class Recording(CrossEntropy):
    """Cross-entropy that logs the hooks fit calls and claims side images."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []
        self.side_trained_images = 0
        self.side_forward_images = 0

    def start_epoch(self, model, optimizer, epoch):
        self.calls.append(("start_epoch", epoch, model.training))
        self.side_trained_images += 5
        self.side_forward_images += 2

    def __call__(self, model, batch):
        self.calls.append(("batch",))
        return super().__call__(model, batch)


def test_start_epoch_runs_before_each_epoch_and_side_images_count(data):
    objective = Recording()
    result = fit(TinyNet(), data.train, objective, config(), indices=np.arange(16))
    starts = [i for i, call in enumerate(objective.calls) if call[0] == "start_epoch"]
    assert [objective.calls[i][1:] for i in starts] == [(0, True), (1, True)]
    assert starts == [0, 3]  # two batches of 8 per epoch after each start
    assert result.trained_images == 2 * 16 + 2 * 5
    assert result.extra_forward_images == 2 * 2


class MixedCE(CrossEntropy):
    """Cross-entropy on a batch whose rows with an even sample index count as retain rows."""

    def retain_rows(self, batch: Batch) -> torch.Tensor:
        return batch.indices % 2 == 0

    def __call__(self, model, batch):
        logits = model.forward_head(model.forward_features(batch.inputs))
        loss = F.cross_entropy(logits, batch.labels)
        return loss, {"ce": loss.detach(), "logits": logits.detach()}


def test_cl_on_a_mixed_loop_uses_the_retain_rows_only():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x1, x2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    labels, indices = torch.randint(0, 4, (6,)), torch.tensor([0, 1, 2, 3, 4, 7])
    plugged = WithCL(MixedCE(), 0.5, 0.2, loop="mixed")
    loss, parts = plugged(model, Batch((x1, x2), labels, indices))
    rows = indices % 2 == 0
    ce = F.cross_entropy(model(x1), labels)
    cl = cross_view_info_nce(model.forward_features(x1)[rows], model.forward_features(x2[rows]), 0.2)
    torch.testing.assert_close(loss, ce + 0.5 * cl)
    torch.testing.assert_close(parts["cl"], cl)
    assert plugged.side_forward_images == 3 and plugged.extra_forward_views == 0
    no_retain = Batch((x1[1::2], x2[1::2]), labels[1::2], torch.tensor([1, 3, 7]))
    loss, parts = plugged(model, no_retain)
    assert float(parts["cl"]) == 0.0


def test_cl_on_a_forget_loop_draws_retain_views(data):
    stream = BatchStream(data.train, np.arange(20, 40), data.train.normalization, config(), "two_view", seed_offset=2)
    plugged = WithCL(CrossEntropy(), 1.0, 0.1, loop="forget", retain_stream=stream)
    assert plugged.recipe == "train" and plugged.extra_forward_views == 0
    result = fit(TinyNet(), data.train, plugged, config(epochs=1), indices=np.arange(8))
    assert result.trained_images == 8 + 8 and result.extra_forward_images == 8
    assert "cl" in result.history[0]
    with pytest.raises(ValueError, match="needs a retain_stream"):
        WithCL(CrossEntropy(), 1.0, 0.1, loop="forget")


def test_batch_stream_cycles_through_epochs(data):
    stream = BatchStream(data.train, np.arange(10), data.train.normalization, config(), batch_size=4)
    seen = [stream.next().indices.numpy() for _ in range(6)]  # 3 batches an epoch (4, 4, 2)
    assert sorted(np.concatenate(seen[:3]).tolist()) == list(range(10))
    assert sorted(np.concatenate(seen[3:]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="empty"):
        BatchStream(data.train, np.zeros(0, np.int64), data.train.normalization, config())


def test_is_member_and_plan_validation():
    assert is_member(torch.tensor([3, 5, 8]), np.array([8, 3])).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="loop must be one of 'retain', 'forget', 'mixed'; got 'both'"):
        Plan(TinyNet(), CrossEntropy(), np.arange(3), loop="both")
    with pytest.raises(TypeError, match="retain_rows"):
        Plan(TinyNet(), CrossEntropy(), np.arange(3), loop="mixed")

"""Tests of coun_fast.evaluate: MIA, metrics, Avg. Gap on the paper's numbers, cost, analyses, reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from coun_fast import evaluate as ev
from coun_fast.data import class_split, random_split
from coun_fast.data.dataset import ImageDataset

IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # normalisation that leaves x = u / 255


# -- a tiny data set and a linear model with known predictions ---------------------------------------
def one_hot_images(predicted: np.ndarray, size: int = 4) -> np.ndarray:
    """uint8 NHWC images whose channel ``predicted[i]`` is 255 and the others 0."""
    images = np.zeros((len(predicted), size, size, 3), np.uint8)
    images[np.arange(len(predicted)), :, :, predicted] = 255
    return images


def toy_dataset(split: str, labels: np.ndarray, predicted: np.ndarray) -> ImageDataset:
    return ImageDataset("toy", split, labels, ("a", "b", "c"), images=one_hot_images(predicted))


class OneHotLinear(nn.Module):
    """timm-style: features = per-channel mean (the one-hot of the encoded class), head = identity
    linear map, so the prediction is the class encoded in the image. Counts the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.zero_()
        self.dropout = nn.Dropout(0.5)
        self.seen = 0

    def forward_features(self, x):
        self.seen += x.shape[0]
        return self.dropout(x.mean((2, 3)))

    def forward_head(self, f):
        return self.head(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def toy_problem(n_train=120, n_test=48, seed=0):
    """Labels, and predictions equal to the label on a known subset (the rest shifted by one)."""
    rng = np.random.default_rng(seed)

    def part(n, split):
        labels = rng.integers(0, 3, n)
        correct = rng.random(n) < 0.7
        predicted = np.where(correct, labels, (labels + 1) % 3)
        return toy_dataset(split, labels, predicted), correct

    (train, train_ok), (test, test_ok) = part(n_train, "train"), part(n_test, "test")
    return train, train_ok, test, test_ok


# -- MIA ----------------------------------------------------------------------------------------
def test_mia_efficacy_separable_confidences():
    rng = np.random.default_rng(0)
    retain = rng.uniform(0.9, 1.0, 400)   # members: confident
    test = rng.uniform(0.0, 0.3, 300)     # non-members: unsure
    assert ev.mia_efficacy(retain, test, rng.uniform(0.0, 0.3, 200)) >= 99.0   # forget looks like test
    assert ev.mia_efficacy(retain, test, rng.uniform(0.9, 1.0, 200)) <= 1.0    # forget looks like retain


def test_mia_on_identical_distributions_is_near_chance():
    rng = np.random.default_rng(0)
    efficacy = ev.mia_efficacy(rng.random(1000), rng.random(1000), rng.random(1000))
    assert 20.0 <= efficacy <= 80.0
    for seed in range(3):  # the balanced attack accuracy cannot beat chance on the same distribution
        rng = np.random.default_rng(seed)
        assert 45.0 <= ev.mia_privacy(rng.random(1000), rng.random(500)) <= 55.0


def test_mia_efficacy_uses_the_first_len_test_retain_samples_only():
    rng = np.random.default_rng(1)
    retain = np.concatenate([rng.uniform(0.8, 1.0, 100), rng.uniform(0.0, 0.2, 300)])
    test = rng.uniform(0.0, 0.5, 100)
    forget = rng.random(150)
    changed = retain.copy()
    changed[100:] = 1.0  # members are retain[:100]; the rest must not matter
    assert ev.mia_efficacy(retain, test, forget) == ev.mia_efficacy(changed, test, forget)


def test_mia_efficacy_short_retain():
    rng = np.random.default_rng(2)
    retain, test, forget = rng.uniform(0.9, 1, 50), rng.uniform(0, 0.2, 80), rng.uniform(0, 0.2, 20)
    with pytest.raises(ValueError, match="short_retain"):
        ev.mia_efficacy(retain, test, forget)
    assert ev.mia_efficacy(retain, test, forget, short_retain="truncate") == 100.0
    with pytest.raises(ValueError, match="short_retain must be"):
        ev.mia_efficacy(retain, test, forget, short_retain="all")


@pytest.mark.parametrize(
    "retain, test, forget, match",
    [
        (np.ones((4, 1)) * 0.5, [0.5, 0.2], [0.3], "retain must be a 1-D"),
        ([0.5, 0.9], [], [0.3], "test is empty"),
        ([0.5, 0.9], [0.1], [0.3, float("nan")], "forget must be finite"),
        ([0.5, 1.2], [0.1], [0.3], r"retain must be probabilities in \[0, 1\]"),
        ([0.5, 0.9], [-0.1], [0.3], "test must be probabilities"),
        ([0.5, 0.9], [0.1], ["a"], "forget must hold real numbers"),
        ([0.5, 0.9], [0.1], [float("inf")], "forget must be finite"),
    ],
)
def test_mia_efficacy_validates_inputs(retain, test, forget, match):
    with pytest.raises(ValueError, match=match):
        ev.mia_efficacy(retain, test, forget)


def test_true_label_confidence():
    probs = np.array([[0.1, 0.9], [0.7, 0.3]])
    np.testing.assert_allclose(ev.true_label_confidence(probs, np.array([1, 1])), [0.9, 0.3])
    with pytest.raises(ValueError, match="labels must lie in"):
        ev.true_label_confidence(probs, np.array([0, 2]))
    with pytest.raises(ValueError, match="labels must be 1-D"):
        ev.true_label_confidence(probs, np.array([0]))


# -- Avg. Gap on the paper's own numbers (Table 2, CIFAR-10 ResNet-18, 10% random) ---------------
RETRAIN = {"RA": 100.00, "UA": 4.81, "TA": 94.67, "MIA": 11.02}
TABLE2 = {  # method: (RA, UA, TA, MIA, printed Avg.Gap)
    "FT": (99.99, 3.76, 94.70, 9.51, 0.65),
    "NegGrad+": (99.95, 4.82, 94.32, 9.09, 0.58),
    "l1-sparse": (99.97, 5.40, 93.81, 10.97, 0.38),
    "SalUn": (99.10, 4.31, 93.84, 11.15, 0.59),
    "NoT": (99.99, 4.19, 94.65, 10.45, 0.30),
    "CoUn": (99.99, 4.12, 94.57, 10.81, 0.25),
}


def row(method: str) -> dict:
    ra, ua, ta, mia, _ = TABLE2[method]
    return {"RA": ra, "UA": ua, "TA": ta, "MIA": mia}


def test_avg_gap_coun_row_of_table2():
    gap = ev.avg_gap(row("CoUn"), RETRAIN)
    assert gap == pytest.approx((0.01 + 0.69 + 0.10 + 0.21) / 4)  # 0.2525
    assert round(gap, 2) == 0.25


@pytest.mark.parametrize("method", sorted(TABLE2))
def test_avg_gap_matches_every_table2_row(method):
    # the paper averages unrounded 10-trial means, so a gap at a rounding half (NoT: 0.305) may print either way
    assert abs(ev.avg_gap(row(method), RETRAIN) - TABLE2[method][4]) <= 0.005 + 1e-9


def test_avg_gap_errors_and_keys():
    assert ev.avg_gap({"UA": 3.0}, {"UA": 5.0}, keys=("UA",)) == 2.0
    with pytest.raises(KeyError, match="retrain_metrics lacks the metric 'MIA'"):
        ev.avg_gap(row("CoUn"), {k: v for k, v in RETRAIN.items() if k != "MIA"})
    with pytest.raises(ValueError, match="finite"):
        ev.avg_gap({**row("CoUn"), "TA": float("nan")}, RETRAIN)


# -- cost ---------------------------------------------------------------------------------------
def test_pflops_paper_retrain_check():
    assert round(ev.pflops(1.114e9, 182 * 45_000), 2) == 27.37
    # CoUn's second view: one more forward per retain image, 4 F per image in all
    assert ev.pflops(1e9, 1000, extra_forward_images=1000) == pytest.approx(4e9 * 1000 / 1e15)
    with pytest.raises(ValueError, match="trained_images"):
        ev.pflops(1e9, -1)
    with pytest.raises(ValueError, match="forward_flops_per_image"):
        ev.pflops(0, 10)


def test_cost_meter():
    meter = ev.CostMeter(device="cpu", forward_flops_per_image=1.114e9)
    with meter:
        meter.add(trained=256, extra_forward=256)
    with meter:
        meter.add(trained=44)
    cost = meter.cost()
    assert cost.trained_images == 300 and cost.extra_forward_images == 256 and cost.seconds > 0
    assert cost.pflops == pytest.approx(1.114e9 * (3 * 300 + 256) / 1e15)
    assert cost.as_dict()["PFLOPs"] == cost.pflops and cost.as_dict()["device"] == "cpu"
    with pytest.raises(RuntimeError, match="not timing"):
        meter.stop()
    assert ev.Cost(seconds=1.0).pflops is None


# -- predict and the metrics on a tiny in-memory data set ----------------------------------------
def test_predict_order_features_and_mode_restored():
    train, train_ok, _, _ = toy_problem()
    model = OneHotLinear().train()
    model.head.eval()  # a mixed state must come back as it was
    indices = np.array([5, 3, 100, 7])
    pred = ev.predict(model, train, indices, normalization=IDENTITY, batch_size=3, features=True)
    np.testing.assert_array_equal(pred.indices, indices)
    np.testing.assert_array_equal(pred.labels, train.labels[indices])
    np.testing.assert_array_equal(pred.correct, train_ok[indices])
    assert pred.features.shape == (4, 3) and pred.logits.dtype == np.float32
    np.testing.assert_allclose(pred.probs.sum(1), 1.0, rtol=1e-6)
    assert model.training and model.dropout.training and not model.head.training
    np.testing.assert_array_equal(pred.select([100, 5]).indices, [100, 5])
    with pytest.raises(ValueError, match="lack"):
        pred.select([6])
    with pytest.raises(ValueError, match="normalization"):
        ev.predict(model, train, normalization=None)
    with pytest.raises(ValueError, match="device meta differs"):
        ev.predict(model, train, normalization=IDENTITY, device="meta")


def test_unlearning_metrics_random_split():
    train, train_ok, test, test_ok = toy_problem()
    split = random_split(len(train), 0.25, seed=3)
    model = OneHotLinear().train()
    out = ev.unlearning_metrics(model, train, test, split, normalization=IDENTITY, batch_size=32,
                                return_predictions=True)
    fa = 100 * train_ok[split.forget].mean()
    assert out["FA"] == pytest.approx(fa)
    assert out["UA"] == pytest.approx(100 - fa)
    assert out["RA"] == pytest.approx(100 * train_ok[split.retain].mean())
    assert out["TA"] == pytest.approx(100 * test_ok.mean())
    assert 0.0 <= out["MIA"] <= 100.0
    assert (out["num_forget"], out["num_retain"], out["num_test"]) == (30, 90, 48)
    assert model.seen == len(train) + len(test)  # every sample predicted exactly once
    assert model.training  # mode restored
    assert ev.accuracy(out["predictions"]["forget"]) == pytest.approx(fa)
    retain, test_pred = out["predictions"]["retain"], out["predictions"]["test"]
    expected_mia = ev.mia_efficacy(retain.confidence, test_pred.confidence, out["predictions"]["forget"].confidence)
    assert out["MIA"] == expected_mia


def test_unlearning_metrics_class_wise_test_split():
    train, train_ok, test, test_ok = toy_problem()
    split = class_split(train.labels, 2)
    out = ev.unlearning_metrics(OneHotLinear(), train, test, split, normalization=IDENTITY, mia=False)
    kept, forgotten = test.labels != 2, test.labels == 2
    assert out["TA"] == pytest.approx(100 * test_ok[kept].mean())
    assert out["forgotten_class_test_acc"] == pytest.approx(100 * test_ok[forgotten].mean())
    assert out["num_test"] == int(kept.sum())
    assert out["UA"] == pytest.approx(100 - 100 * train_ok[train.labels == 2].mean())
    assert "MIA" not in out


def test_accuracy_rejects_empty():
    pred = ev.Predictions(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="no samples"):
        ev.accuracy(pred)


# -- analyses -----------------------------------------------------------------------------------
def test_prediction_distribution_sums_to_100_and_orders():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 5))
    logits[:300, 2] += 10  # class 2 dominates
    full = ev.prediction_distribution(logits, ["a", "b", "c", "d", "e"])
    assert sum(full.values()) == pytest.approx(100.0)
    assert next(iter(full)) == "c" and full["c"] >= 60.0
    top = ev.prediction_distribution(torch.softmax(torch.tensor(logits), 1), 5, top=2)  # names "0".."4"
    assert list(top) == [str("abcde".index(name)) for name in list(full)[:2]]
    cols = ev.prediction_distribution(logits, ["a", "b", "c", "d", "e"], columns=["e", 0])
    assert list(cols) == ["e", "a"] and cols["a"] == full["a"]
    with pytest.raises(ValueError, match="classes names 3 classes"):
        ev.prediction_distribution(logits, ["a", "b", "c"])


def test_distribution_gap_on_the_papers_tables():
    # Table 1, class-wise 'truck': Truck / Automobile / Airplane / Ship
    retrain = {"truck": 0.00, "automobile": 69.32, "airplane": 13.47, "ship": 12.60}
    coun = {"truck": 0.00, "automobile": 69.60, "airplane": 13.96, "ship": 13.13}
    assert round(ev.distribution_gap(coun, retrain), 2) == 0.33
    # Table 4, normalised centroid distances: FT 0.033, CoUn 0.017
    retrain4 = [0.90, 0.96, 0.95]
    assert round(ev.distribution_gap([0.86, 0.94, 0.91], retrain4), 3) == 0.033
    assert round(ev.distribution_gap([0.87, 0.96, 0.93], retrain4), 3) == 0.017
    with pytest.raises(KeyError, match="dist lacks"):
        ev.distribution_gap({"truck": 0.0}, retrain)


def test_centroid_distances_on_constructed_features():
    offsets = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    centres = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # 0, 5 and 10 away from class 0's centre
    retain = np.concatenate([c + offsets for c in centres])
    labels = np.repeat([0, 1, 2], 4)
    forget = np.zeros((7, 2))  # all at class 0's centroid
    raw = ev.centroid_distances(forget, retain, labels, 4, normalize="none")
    np.testing.assert_allclose(raw[:3], [0.0, 5.0, 10.0], atol=1e-12)
    assert math.isnan(raw[3])  # no retain samples of class 3 (e.g. the forgotten class)
    normalised = ev.centroid_distances(torch.zeros(7, 2), retain, labels, 4)
    np.testing.assert_allclose(normalised[:3], [0.0, 0.5, 1.0], atol=1e-12)
    with pytest.raises(ValueError, match="retain_labels must lie in"):
        ev.centroid_distances(forget, retain, labels, 2)


# -- reports ------------------------------------------------------------------------------------
def table_rows() -> dict:
    return {
        "Retrain": {**RETRAIN, "seconds": 1200.0, "PFLOPs": 27.37},
        "CoUn": {**row("CoUn"), "seconds": 351.25, "PFLOPs": 8.02},
        "FT": row("FT"),
    }


def test_metrics_table_formatting():
    table = ev.metrics_table(table_rows())
    lines = table.strip().splitlines()
    assert lines[0] == "| Method | UA | RA | TA | MIA | Avg.Gap | time(s) | PFLOPs |"
    assert lines[2] == "| Retrain | 4.81 | 100.00 | 94.67 | 11.02 | — | 1200.00 | 27.37 |"
    assert lines[3] == "| CoUn | 4.12 | 99.99 | 94.57 | 10.81 | 0.25 | 351.25 | 8.02 |"
    assert lines[4] == "| FT | 3.76 | 99.99 | 94.70 | 9.51 | 0.65 |  |  |"
    plain = ev.metrics_table({"Retrain": RETRAIN, "CoUn": row("CoUn")}, show_delta=True)
    assert "time(s)" not in plain and "PFLOPs" not in plain
    assert "| CoUn | 4.12 (0.69) | 99.99 (0.01) | 94.57 (0.10) | 10.81 (0.21) | 0.25 |" in plain
    assert "Avg.Gap" not in ev.metrics_table({"CoUn": row("CoUn")}, retrain_key=None)
    with pytest.raises(KeyError, match="retrain_key 'Retrain' is not a row"):
        ev.metrics_table({"CoUn": row("CoUn")})


def test_gap_bar_chart_writes_png(tmp_path):
    path = ev.gap_bar_chart(table_rows(), tmp_path / "gaps.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="only the Retrain row"):
        ev.gap_bar_chart({"Retrain": RETRAIN}, tmp_path / "none.png")

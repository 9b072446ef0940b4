"""The training loop: it learns, its schedules, resume equivalence, checkpoints, configuration errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coun_fast import checkpoint
from coun_fast.data.embedded import synthetic
from coun_fast.train import PRESETS, CrossEntropy, TrainConfig, fit, lr_factor
from nets import TinyNet


@pytest.fixture(scope="module")
def data():
    return synthetic(num_classes=4, train_per_class=24, test_per_class=4, image_size=8, seed=0)


def small_config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=3, batch_size=16, lr=0.05, schedule="cosine", min_lr=1e-3, device="cpu",
                       progress=False, augment_backend="cpu")
    return base.replace(**changes)


def test_training_lowers_the_loss(data):
    torch.manual_seed(0)
    model = TinyNet()
    result = fit(model, data.train, CrossEntropy(), small_config(epochs=6, lr=0.1))
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.trained_images == 6 * len(data.train) and result.extra_forward_images == 0
    assert {"epoch", "lr", "loss", "ce", "acc", "seconds", "images_per_s"} <= set(result.history[0])
    assert not model.training


def test_resume_after_a_kill_is_identical(data, tmp_path):
    config = small_config(epochs=4, checkpoint_every=0)  # a checkpoint after every epoch
    torch.manual_seed(0)
    reference = TinyNet()
    expected = fit(reference, data.train, CrossEntropy(), config)

    class Killed(Exception):
        pass

    def kill_in_third_epoch(model, epoch):
        if epoch == 2:
            raise Killed
        return {}

    torch.manual_seed(0)
    with pytest.raises(Killed):
        fit(TinyNet(), data.train, CrossEntropy(), config, run_dir=tmp_path, on_epoch_end=kill_in_third_epoch)
    assert checkpoint.load(tmp_path / "checkpoint.pt")["epoch"] == 2
    resumed_model = TinyNet()  # other initial weights: everything must come from the checkpoint
    resumed = fit(resumed_model, data.train, CrossEntropy(), config, run_dir=tmp_path, resume=True)
    assert resumed.resumed_from_epoch == 2
    for (name, a), b in zip(reference.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]
    assert strip(resumed.history) == strip(expected.history)


def test_checkpoints_are_written_when_due_and_after_the_last_epoch(data, tmp_path, monkeypatch):
    """checkpoint_every: a checkpoint after the first epoch that ends that long after the last
    write (or the start), and after the last epoch; 0 after every epoch. On a clock that advances
    25 s per epoch, 60 s between writes means after the third epoch and the last."""
    import coun_fast.train as train_module

    def written_epochs(config, run_dir):
        now = {"t": 0.0}
        monkeypatch.setattr(train_module, "_clock", lambda: now["t"])
        seen = []

        def hook(model, epoch):  # runs before the epoch's own checkpoint decision
            now["t"] = 25.0 * (epoch + 1)
            path = run_dir / "checkpoint.pt"
            seen.append(checkpoint.load(path)["epoch"] if path.is_file() else None)
            return {}

        fit(TinyNet(), data.train, CrossEntropy(), config, run_dir=run_dir, on_epoch_end=hook)
        return seen, checkpoint.load(run_dir / "checkpoint.pt")["epoch"]

    assert written_epochs(small_config(epochs=6, checkpoint_every=60), tmp_path / "a") == (
        [None, None, None, 3, 3, 3], 6)
    assert written_epochs(small_config(epochs=3, checkpoint_every=0), tmp_path / "b") == ([None, 1, 2], 3)
    assert written_epochs(small_config(epochs=3), tmp_path / "c") == ([None, None, None], 3)  # default 60 s
    # the setting does not make another run: a run resumes whatever its checkpoint_every
    resumed = fit(TinyNet(), data.train, CrossEntropy(), small_config(epochs=3, checkpoint_every=5),
                  run_dir=tmp_path / "c", resume=True)
    assert resumed.resumed_from_epoch == 3


def test_resume_refuses_another_configuration(data, tmp_path):
    fit(TinyNet(), data.train, CrossEntropy(), small_config(epochs=1), run_dir=tmp_path)
    with pytest.raises(ValueError, match="another configuration .*lr: 0.05 -> 0.2"):
        fit(TinyNet(), data.train, CrossEntropy(), small_config(epochs=1, lr=0.2), run_dir=tmp_path, resume=True)


def test_checkpoint_record_and_atomic_write(data, tmp_path):
    fit(TinyNet(), data.train, CrossEntropy(), small_config(epochs=1), run_dir=tmp_path, record={"split": [1, 2]})
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    assert state["record"] == {"split": [1, 2]} and state["config"]["seed"] == 0
    assert {"torch", "python", "device", "coun_fast"} <= set(state["environment"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable coun_fast checkpoint"):
        checkpoint.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


def test_epoch_hook_and_indices(data):
    seen = []
    subset = np.arange(0, len(data.train), 3)
    result = fit(TinyNet(), data.train, CrossEntropy(), small_config(epochs=2), indices=subset,
                 on_epoch_end=lambda model, epoch: seen.append(model.training) or {"probe": epoch})
    assert seen == [False, False] and [r["probe"] for r in result.history] == [0, 1]
    assert result.trained_images == 2 * len(subset)


def test_paper_schedule():
    paper = PRESETS["paper"]
    assert (paper.epochs, paper.batch_size, paper.lr, paper.momentum, paper.weight_decay) == (182, 256, 0.1, 0.9, 5e-4)
    factors = [lr_factor(paper, e) for e in range(182)]
    assert factors[90] == 1.0 and factors[91] == pytest.approx(0.1) and factors[137] == pytest.approx(0.01)
    assert factors[135] == pytest.approx(0.1) and factors[136] == pytest.approx(0.01)
    cosine = PRESETS["paper_unlearn"]
    assert lr_factor(cosine, 0) == 1.0
    assert cosine.lr * lr_factor(cosine, cosine.epochs) == pytest.approx(1e-4)
    warm = TrainConfig(epochs=10, warmup_epochs=4)
    assert [lr_factor(warm, e) for e in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(lr_factor(TrainConfig(schedule="constant"), 100), 1.0)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(epochs=0), "epochs must be an integer >= 1"),
        (dict(batch_size=2.5), "batch_size must be an integer"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(weight_decay=-1.0), "weight_decay must be a finite number >= 0"),
        (dict(schedule="step"), "schedule must be one of"),
        (dict(milestones=(0.5, 1.5)), "milestones must be fractions"),
        (dict(precision="int8"), "precision must be one of"),
        (dict(seed=-3), "seed must be an integer >= 0"),
        (dict(checkpoint_every=-1.0), "checkpoint_every must be a finite number of seconds >= 0"),
        (dict(checkpoint_every=True), "checkpoint_every must be a finite number of seconds >= 0"),
    ],
)
def test_config_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


def test_missing_gpu_is_a_clear_error(data):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        fit(TinyNet(), data.train, CrossEntropy(), small_config(device="cuda"))


@pytest.mark.slow
def test_compiled_training_matches_eager(data):
    """config.compile=True compiles forward_features/forward_head (the fused loss runs inside). A model
    without dropout: compiled code draws dropout masks from another random stream than eager code."""
    from coun_fast.models import build
    from coun_fast.unlearn.coun import CoUnObjective

    histories = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        result = fit(build("small_cnn", 4), data.train, CoUnObjective(0.5), small_config(epochs=2, compile=compile_))
        histories.append([row["loss"] for row in result.history])
    assert histories[1] == pytest.approx(histories[0], rel=1e-4)

"""The workflow API and the ``coun-fast`` command: end to end at a tiny size, --help, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from coun_fast import checkpoint
from coun_fast.cli import main
from coun_fast.models import build
from coun_fast.train import TrainConfig
from coun_fast.workflow import (
    DataSource,
    evaluate_run,
    load_run,
    make_forget_split,
    predict_run,
    run_unlearning,
    save_run,
    train_original,
)

SUBCOMMANDS = ["demo", "train", "unlearn", "evaluate", "data", "kernels", "info"]
TINY = dict(batch_size=64, device="cpu", progress=False, augment_backend="cpu")


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    folder = tmp_path_factory.mktemp("original")
    config = TrainConfig(epochs=2, lr=0.05, **TINY)
    return train_original(DataSource("digits", image_size=8), "small_cnn", config, folder)


def test_workflow_end_to_end(original, tmp_path):
    assert (original.folder / "model.pt").is_file() and (original.folder / "checkpoint.pt").is_file()
    assert original.record["kind"] == "original" and len(original.record["train_indices"]) == 1438
    split = make_forget_split(original, "random", ratio=0.1, seed=0)
    config = TrainConfig(epochs=1, lr=0.01, schedule="cosine", min_lr=1e-4, **TINY)
    coun = run_unlearning("coun", original, split, config, tmp_path / "coun", hparams={"lam": 0.5})
    assert (tmp_path / "coun" / "split.npz").is_file()
    again = load_run(tmp_path / "coun")
    for a, b in zip(coun.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a.cpu(), b)
    assert again.record["hparams"] == {"lam": 0.5, "temperature": 0.1, "cl_scope": "global"}
    assert again.record["split"]["forget"] == split.forget.tolist()
    assert checkpoint.load(tmp_path / "coun" / "checkpoint.pt")["record"]["split"]["retain"] == split.retain.tolist()
    cost = again.record["cost"]
    assert cost["trained_images"] == len(split.retain) and cost["extra_forward_images"] == len(split.retain)
    assert cost["PFLOPs"] > 0
    metrics = evaluate_run(tmp_path / "coun", retrain={"UA": 0.0, "RA": 100.0, "TA": 100.0, "MIA": 0.0})
    assert {"UA", "RA", "TA", "MIA", "Avg.Gap", "seconds", "PFLOPs"} <= set(metrics)
    assert 0 <= metrics["UA"] <= 100 and metrics["Avg.Gap"] >= 0
    with pytest.raises(ValueError, match="has no split.npz"):
        evaluate_run(original)
    # the same in two parts: the model passes, then the metrics (which need no model)
    predictions = predict_run(tmp_path / "coun")
    assert set(predictions.predictions) == {"forget", "retain", "test"} and predictions.predict_seconds > 0
    parts = predictions.metrics({"UA": 0.0, "RA": 100.0, "TA": 100.0, "MIA": 0.0})
    assert {k: v for k, v in parts.items() if k != "eval_seconds"} == {
        k: v for k, v in metrics.items() if k != "eval_seconds"}
    assert parts["eval_seconds"] >= predictions.predict_seconds
    with pytest.raises(ValueError, match="mia_attack must be one of 'confidence'"):
        predict_run(tmp_path / "coun", mia_attack="loss")
    analysed = evaluate_run(again, analyses=True)
    assert len(analysed["forget_predictions"]) == 5 and sum(analysed["forget_predictions"].values()) <= 100.0 + 1e-9
    distances = analysed["centroid_distances"]
    assert list(distances) == [str(d) for d in range(10)] and max(distances.values()) == pytest.approx(1.0)


def test_checkpoint_of_another_architecture_or_class_count(original, tmp_path):
    state = checkpoint.load(original.folder / "model.pt")
    other = build("resnet18", 10)
    checkpoint.save(tmp_path / "model.pt", {**state, "model": other.state_dict()})
    with pytest.raises(ValueError, match="resnet18|small_cnn"):
        load_run(tmp_path / "model.pt")
    eleven = save_run(tmp_path / "eleven", build("small_cnn", 11), original.record)
    split = make_forget_split(original, "random", ratio=0.1, seed=0)
    with pytest.raises(ValueError, match="has 11 classes but the data set 'digits' has 10"):
        run_unlearning("ft", eleven, split, TrainConfig(epochs=1, **TINY), tmp_path / "ft")
    with pytest.raises(ValueError, match="not a finished model file"):
        load_run(original.folder / "checkpoint.pt")


def test_forget_split_outside_the_originals_training_set_is_refused(original, tmp_path):
    from coun_fast.data import random_split

    split = random_split(1500, 0.1, seed=0)  # drawn from 1500 indices; the Original saw 1438
    with pytest.raises(ValueError):
        run_unlearning("ft", original, split, TrainConfig(epochs=1, **TINY), tmp_path / "ft")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"coun-fast {command}" in text and "--help" in text


def test_top_level_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(command in text for command in SUBCOMMANDS)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "alexnet", "--out", "x"], "invalid choice: 'alexnet'"),
        (["unlearn", "--method", "forgetful", "--original", "x", "--out", "y"], "invalid choice: 'forgetful'"),
        (["train", "--dataset", "cifar10", "--data", "/no/such/path", "--out", "x"], "path does not exist: /no/such/path"),
        (["train", "--dataset", "cifar10", "--out", "x"], "needs a path"),
    ],
)
def test_cli_errors_are_clear(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    (["--lam", "-1"], "lam must be a finite number >= 0"),
    (["--temperature", "0"], "temperature must be a finite number > 0"),
    (["--ratio", "1.5"], "ratio must be in (0, 1)"),
])
def test_cli_unlearn_errors(original, option, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["unlearn", "--method", "coun", "--original", str(original.folder), "--out", str(tmp_path / "u"),
              "--epochs", "1", "--no-progress", *option])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_runs_end_to_end_at_a_tiny_size(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--image-size", "8", "--original-epochs", "2", "--unlearn-epochs", "1", "--out", str(out),
                 "--device", "cpu", "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    text = captured.out
    for row in ("| Original |", "| Retrain |", "| FT |", "| CoUn |"):
        assert row in text
    assert "training the Original small_cnn" in captured.err and "training the Original" not in text  # step lines
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"Original", "Retrain", "FT", "CoUn"}
    assert all(key in results["CoUn"] for key in ("UA", "RA", "TA", "MIA", "Avg.Gap"))
    assert (out / "results.md").read_text().count("|") > 20
    assert (out / "gaps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_unlearn_under_the_authors_protocol_with_text_hyperparameters(original, tmp_path, capsys):
    out = tmp_path / "badt"
    code = main(["unlearn", "--method", "bad_teacher", "--original", str(original.folder), "--out", str(out),
                 "--protocol", "authors", "--batch-size", "64", "--device", "cpu", "--augment-backend", "cpu",
                 "--no-progress", "--hparam", "kl_reduction=batchmean_t2", "--hparam", "augment=true"])
    assert code == 0
    record = load_run(out).record
    assert (record["config"]["optimizer"], record["config"]["lr"], record["config"]["epochs"]) == ("adam", 1e-4, 1)
    assert record["config"]["batch_size"] == 64  # an explicit option wins over the protocol
    assert record["hparams"]["kl_reduction"] == "batchmean_t2" and record["hparams"]["augment"] is True
    code = main(["evaluate", str(out), "--mia-attack", "entropy", "--device", "cpu"])
    assert code == 0 and "badt" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["unlearn", "--method", "not", "--original", str(original.folder), "--out", str(tmp_path / "n"),
              "--protocol", "authors", "--no-progress"])
    assert "method 'not' has no authors' protocol" in capsys.readouterr().err

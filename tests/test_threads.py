"""The CPU thread policy (coun_fast.threads): pins, the load- and size-based choice, fit's use of
it, the CLI option. Nothing here is timed: the load is replaced by fixed values."""

from __future__ import annotations

import pytest
import torch

from coun_fast import checkpoint, cli, threads
from coun_fast.data.embedded import synthetic
from coun_fast.data.loader import AugmentedLoader
from coun_fast.train import CrossEntropy, TrainConfig, batch_multiply_adds, cpu_thread_choice, fit
from nets import TinyNet


@pytest.fixture(autouse=True)
def no_pin(monkeypatch):
    """Every test starts unpinned (conftest pins 'torch' through the environment), with torch at 2
    threads and the machine at 2 usable cores."""
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_pinned", None)
    monkeypatch.setattr(threads, "_ceiling", None)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    torch.set_num_threads(2)


def busy(monkeypatch, cores: float | None) -> None:
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=threads.SAMPLE_S: cores)


@pytest.mark.parametrize("value, expected", [("3", 3), (1, 1), (" auto ", "auto"), ("TORCH", "torch")])
def test_parse_accepts_counts_auto_and_torch(value, expected):
    assert threads.parse(value) == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "", "1.5", True])
def test_parse_refuses_anything_else_in_one_line_naming_the_option(value):
    with pytest.raises(ValueError, match=r"^--threads must be a positive integer, 'auto' or 'torch'; got") as error:
        threads.parse(value, "--threads")
    assert "\n" not in str(error.value)


def test_an_idle_machine_gets_torchs_count(monkeypatch):
    busy(monkeypatch, 0.1)
    choice = threads.choose()
    assert choice.threads == 2 and "2 of 2 cores free" in choice.reason


def test_one_busy_process_leaves_one_thread(monkeypatch):
    busy(monkeypatch, 1.0)
    choice = threads.choose()
    assert choice.threads == 1 and "1 of 2 cores free" in choice.reason


def test_a_core_counts_as_free_while_less_than_half_busy(monkeypatch):
    busy(monkeypatch, 0.4)
    assert threads.choose().threads == 2
    busy(monkeypatch, 0.6)
    assert threads.choose().threads == 1
    busy(monkeypatch, 5.0)  # more load than cores: still one thread
    assert threads.choose().threads == 1


def test_small_work_runs_on_one_thread_and_large_work_on_the_free_cores(monkeypatch):
    busy(monkeypatch, 0.0)
    small = threads.choose(work=threads.WORK_PER_THREAD * 1.5)
    assert small.threads == 1 and "multiply-adds" in small.reason
    assert threads.choose(work=threads.WORK_PER_THREAD * 100).threads == 2


def test_auto_never_exceeds_torchs_count(monkeypatch):
    busy(monkeypatch, 0.0)
    torch.set_num_threads(1)  # what the caller set
    assert threads.choose().threads == 1


def test_an_unreadable_load_keeps_the_usable_cores(monkeypatch):
    busy(monkeypatch, None)
    choice = threads.choose()
    assert choice.threads == 2 and "unknown load" in choice.reason


def test_pins_win_over_the_load_in_order_api_environment_omp(monkeypatch):
    busy(monkeypatch, 1.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose() == threads.Choice(2, "pinned by OMP_NUM_THREADS=2")
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.choose().threads == 3 and threads.ENV in threads.choose().reason
    threads.pin(4)
    assert threads.choose().threads == 4
    threads.pin("auto")  # the API asks for the auto choice whatever the environment says
    assert threads.choose().threads == 1
    threads.pin(None)
    assert threads.choose().threads == 3


def test_the_torch_pin_keeps_torchs_count(monkeypatch):
    busy(monkeypatch, 1.0)
    monkeypatch.setenv(threads.ENV, "torch")
    assert threads.choose().threads == 2


def test_a_bad_environment_value_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(ValueError, match=f"^{threads.ENV} must be"):
        threads.choose()


def test_using_sets_the_count_for_the_block_and_restores_it():
    with threads.using(threads.Choice(1, "test")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_apply_to_process_lowers_the_count_and_later_choices_may_go_back_up(monkeypatch):
    busy(monkeypatch, 1.0)
    assert threads.apply_to_process().threads == 1 and torch.get_num_threads() == 1
    busy(monkeypatch, 0.0)
    assert threads.choose().threads == 2  # up to torch's count before apply_to_process


def test_busy_cores_reads_a_number_from_proc_stat():
    measured = threads.busy_cores(0.01)
    assert measured is None or measured >= 0.0


def test_batch_multiply_adds_counts_a_models_forward_and_keeps_its_mode():
    model = TinyNet().train()
    work = batch_multiply_adds(model, (8, 8), 2)
    assert work == pytest.approx(2 * (8 * 8 * 8 * 27 + 32 * 4))  # the convolution and the head
    assert model.training


@pytest.fixture(scope="module")
def data():
    return synthetic(num_classes=4, train_per_class=8, test_per_class=2, image_size=8, seed=0)


def config(**changes) -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=16, lr=0.05, device="cpu", progress=False, augment_backend="cpu",
                       checkpoint_every=0).replace(**changes)


def test_fit_trains_with_the_chosen_count_records_it_and_restores_torchs(monkeypatch, data, tmp_path):
    busy(monkeypatch, 1.0)
    result = fit(TinyNet(), data.train, CrossEntropy(), config(), run_dir=tmp_path)
    assert checkpoint.load(tmp_path / "checkpoint.pt")["environment"]["threads"] == 1
    assert [row["threads"] for row in result.history] == [1, 1]
    assert torch.get_num_threads() == 2


def test_a_resumed_run_keeps_the_count_it_began_with_unless_pinned(monkeypatch, data):
    busy(monkeypatch, 1.0)  # the load now would give 1 thread
    loader = AugmentedLoader(data.train, "eval", batch_size=16, device="cpu", backend="cpu")
    kept = cpu_thread_choice(TinyNet(), loader, began_with=2)
    assert kept.threads == 2 and "resumed" in kept.reason
    assert cpu_thread_choice(TinyNet(), loader, began_with=4).threads == 1  # more than the usable cores
    threads.pin(1)
    assert cpu_thread_choice(TinyNet(), loader, began_with=2).threads == 1


def test_the_cli_refuses_a_bad_thread_count_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--threads", "0", "--out", "unused"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("coun-fast train: error: --threads must be a positive integer, 'auto' or "
                                       "'torch'; got '0'\n")

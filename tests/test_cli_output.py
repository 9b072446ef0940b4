"""What ``coun-fast`` writes where: --version, and -v / -q through a real logging handler (step
lines and warnings on standard error, results on standard output), and a user's own data on the
command line."""

from __future__ import annotations

import logging

import pytest

import coun_fast
from coun_fast.cli import main
from coun_fast.data import DatasetSplits, ImageDataset
from coun_fast.data.convert import save_arrays
from coun_fast.data.embedded import synthetic

TRAIN = ["train", "--model", "small_cnn", "--image-size", "8", "--epochs", "1", "--batch-size", "256", "--device",
         "cpu"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"coun-fast {coun_fast.__version__}"
    assert coun_fast.info()["version"] == coun_fast.__version__


@pytest.mark.parametrize("flags", [["-v"], ["--verbose"], ["-vv"]])
def test_verbose_shows_the_loaders_backend_and_why(flags, tmp_path, capsys):
    assert main([*flags, *TRAIN, "--no-progress", "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "info coun_fast.data: augmentation backend cpu on cpu (auto: the device is cpu)" in captured.err
    assert "wrote" in captured.out and "augmentation backend" not in captured.out


def test_default_and_quiet(tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path / "default")]) == 0
    captured = capsys.readouterr()
    assert "augmentation backend" not in captured.err and "original:" in captured.err  # the progress bar
    assert main([*TRAIN, "-q", "--out", str(tmp_path / "quiet")]) == 0  # after the subcommand works too
    captured = capsys.readouterr()
    assert captured.err == "" and "wrote" in captured.out
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", *TRAIN, "-v", "--out", str(tmp_path / "both")])
    assert exit_info.value.code == 2 and "-q/--quiet and -v/--verbose" in capsys.readouterr().err


def test_the_handler_is_removed_afterwards(tmp_path):
    logger = logging.getLogger("coun_fast")
    before = (list(logger.handlers), logger.level)
    main(["-q", "info"])
    with pytest.raises(SystemExit):
        main([*TRAIN, "--epochs", "0", "--out", str(tmp_path / "x")])  # an error inside the command
    assert (list(logger.handlers), logger.level) == before


def test_warnings_show_even_when_quiet(tmp_path, capsys, monkeypatch):
    import coun_fast.cli as cli

    def warn(args):
        logging.getLogger("coun_fast.train").warning("resuming with 1 thread")
        logging.getLogger("coun_fast.data").info("not shown")
        return 0

    monkeypatch.setattr(cli, "SUBCOMMANDS", [(n, s, d, a, warn if n == "train" else r)
                                             for n, s, d, a, r in cli.SUBCOMMANDS])
    assert main(["-q", *TRAIN, "--out", str(tmp_path / "w")]) == 0
    assert capsys.readouterr().err == "warning: resuming with 1 thread\n"


# -- a user's own data on the command line ----------------------------------------------------------
DATA_FUNCTION = '''
import numpy as np
from coun_fast.data.embedded import synthetic

def datasets():
    made = synthetic(num_classes=3, train_per_class=30, test_per_class=8, image_size=8, seed=1)
    pairs = lambda data: [(image, int(label)) for image, label in zip(data.images, data.labels)]
    return pairs(made.train), pairs(made.test)
'''


@pytest.mark.parametrize("kind", ["npz", "python"])
def test_train_unlearn_evaluate_on_a_users_data(kind, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if kind == "npz":
        made = synthetic(num_classes=3, train_per_class=30, test_per_class=8, image_size=8, seed=1)
        splits = DatasetSplits(ImageDataset.from_arrays(made.train.images, made.train.labels, ["a", "b", "c"]),
                               ImageDataset.from_arrays(made.test.images, made.test.labels, ["a", "b", "c"],
                                                        split="test"))
        location = str(save_arrays(tmp_path / "mine.npz", splits))
    else:
        (tmp_path / "my_data.py").write_text(DATA_FUNCTION)
        location = "my_data:datasets"
    common = ["--device", "cpu", "--batch-size", "32", "--augment-backend", "cpu", "-q"]
    assert main(["train", "--dataset", kind, "--data", location, "--model", "small_cnn", "--epochs", "1",
                 "--out", "original", *common]) == 0
    assert main(["unlearn", "--method", "ft", "--original", "original", "--ratio", "0.2", "--epochs", "1",
                 "--out", "ft", *common]) == 0
    assert main(["evaluate", "ft"]) == 0
    assert "| ft |" in capsys.readouterr().out

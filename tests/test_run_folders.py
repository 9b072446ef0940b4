"""Run folders are never silently corrupted (issue 12), tried as a user does, through ``coun-fast``.

One test (or group) per defect the issue lists:

1. a rejected run must not write into a finished run; evaluate must refuse a split other than the
   one the model unlearned;
2. ``--resume`` must refuse a checkpoint of another data set, method or architecture (and resume
   its own bit for bit, cleaning orphaned temporary files);
3. two runs on one folder: the second is refused at once, naming the first;
4. a split file of another data set of the same size is refused;
5. file-system problems (read-only, under a file, disk full, a bad device) give one line, exit 2,
   and damage nothing;
6. everything is validated before compute (demo, ``run --check``, ``--method`` choices);
7. model files and checkpoints are loaded safely;
8. small things: permissions, a random-bytes split file, a CIFAR-10 file given as cifar100, help.

Every test that meets an earlier good folder asserts it is byte-identical afterwards (a hash of
every file in it). Subprocesses run with ``OMP_NUM_THREADS=1``, so resumed runs are comparable
bit for bit.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from coun_fast.cli import main
from coun_fast.data.embedded import synthetic
from coun_fast.data.packed import save_npz
from coun_fast.runfolder import locked, partial_path
from coun_fast.train import TrainConfig
from coun_fast.workflow import DataSource, load_run, make_forget_split, run_unlearning, train_original

TINY = ["--model", "small_cnn", "--image-size", "8", "--batch-size", "64", "--device", "cpu", "--no-progress",
        "--augment-backend", "cpu", "--checkpoint-every", "0"]  # kills wait for the first epoch's checkpoint
TRAIN = ["train", *TINY, "--epochs", "2", "--lr", "0.05"]
API = dict(batch_size=64, device="cpu", progress=False, augment_backend="cpu", checkpoint_every=0)


# -- helpers ---------------------------------------------------------------------------------------
def tree(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (hidden ones too), by relative path."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def environment(tmp: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COUN_FAST_CACHE": str(tmp / "data_cache"),
            "PYTHONDONTWRITEBYTECODE": "1"}


def cli(*args, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``coun-fast ARGS`` in a subprocess (``python -m coun_fast``)."""
    return subprocess.run([sys.executable, "-m", "coun_fast", *map(str, args)], cwd=cwd, env=environment(cwd),
                          capture_output=True, text=True, timeout=timeout)


def refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 with one error line that holds every fragment, no traceback; returns the line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def checkpoint_of(out: Path) -> Path | None:
    """Where a killed run of ``out`` left its checkpoint (this layout: beside it; else inside it)."""
    for path in (partial_path(out) / "checkpoint.pt", out / "checkpoint.pt"):
        if path.is_file():
            return path
    return None


def kill_after_first_checkpoint(process: subprocess.Popen, out: Path, timeout: float = 300) -> None:
    """Wait for the first checkpoint of ``out``, then kill -9 the run (it must still be running)."""
    deadline = time.monotonic() + timeout
    while checkpoint_of(out) is None:
        assert process.poll() is None, f"the run ended before its first checkpoint: {process.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; give it more epochs"
    process.send_signal(signal.SIGKILL)
    process.wait()


def start(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "coun_fast", *map(str, args)], cwd=cwd, env=environment(cwd),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def copy_runs(source: Path, target: Path, *names: str) -> None:
    for name in names:
        shutil.copytree(source / name, target / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A folder with ``orig`` (an Original of digits at 8x8) and ``u_good`` (a finished FT run)."""
    root = tmp_path_factory.mktemp("runs")
    original = train_original(DataSource("digits", image_size=8), "small_cnn",
                              TrainConfig(epochs=2, lr=0.05, **API), root / "orig")
    split = make_forget_split(original, "random", ratio=0.1, seed=0)
    run_unlearning("ft", original, split, TrainConfig(epochs=1, lr=0.01, schedule="cosine", min_lr=1e-4, **API),
                   root / "u_good")
    return root


@pytest.fixture
def work(tmp_path, runs) -> Path:
    """A copy of ``orig`` and ``u_good`` in this test's own folder."""
    copy_runs(runs, tmp_path, "orig", "u_good")
    return tmp_path


def unlearn(*extra: str, epochs: int = 1, original: str = "orig") -> list[str]:
    """``coun-fast unlearn`` arguments of a tiny run from ``original``."""
    return ["unlearn", "--original", original, "--epochs", str(epochs), "--lr", "0.01", *TINY[6:], *extra]


# -- 1. a rejected run leaves a finished one untouched; evaluate checks the split ------------------
@pytest.mark.parametrize("arguments, fragments", [
    (["--method", "coun", "--lam", "-1", "--split-seed", "1"], ["lam must be a finite number >= 0"]),
    (["--method", "ft", "--split-seed", "1"], ["already holds a finished run", "--overwrite"]),
    (["--method", "ssd+cl", "--split-seed", "1"], []),
], ids=["bad-hyperparameter", "finished-without-overwrite", "ssd+cl"])
def test_rejected_unlearning_leaves_the_finished_run_byte_identical(work, arguments, fragments):
    before = tree(work / "u_good")
    result = cli(*unlearn(*arguments, "--out", "u_good"), cwd=work)
    assert result.returncode == 2, result.stderr[-2000:]
    if fragments:
        refused(result, *fragments)
    assert tree(work / "u_good") == before
    assert not partial_path(work / "u_good").exists()


def test_evaluate_refuses_a_split_the_model_did_not_unlearn(work):
    good = cli("evaluate", "u_good", cwd=work)
    assert good.returncode == 0, good.stderr
    other = make_forget_split(load_run(work / "orig"), "random", ratio=0.1, seed=1)
    other.save(work / "other_split.npz")
    refused(cli("evaluate", "u_good", "--split", "other_split.npz", cwd=work),
            "'other_split.npz' is not the split the model", "unlearned")
    shutil.copyfile(work / "other_split.npz", work / "u_good" / "split.npz")  # a split.npz replaced behind its back
    refused(cli("evaluate", "u_good", cwd=work), "split.npz' is not the split the model")


def test_overwrite_replaces_a_finished_run_only_when_the_new_one_succeeds(work):
    config = TrainConfig(epochs=1, lr=0.01, schedule="cosine", min_lr=1e-4, **API)
    original = load_run(work / "orig")
    split = make_forget_split(original, "random", ratio=0.1, seed=3)
    replaced = run_unlearning("ft", original, split, config, work / "u_good", overwrite=True)
    assert replaced.folder == work / "u_good" and load_run(work / "u_good").record["split"]["seed"] == 3
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".u_good")) == [".u_good.lock"]


def test_overwrite_never_replaces_a_folder_of_other_files(work, capsys):
    (work / "mine").mkdir()
    (work / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(SystemExit) as exit_info:
        main([*TRAIN, "--out", str(work / "mine"), "--overwrite"])
    assert exit_info.value.code == 2 and "'thesis.tex', which coun_fast did not write" in capsys.readouterr().err
    assert tree(work / "mine") == {"thesis.tex": hashlib.sha256(b"years of work").hexdigest()}


def test_evaluate_checks_the_retrain_split_and_the_json_file(work, capsys):
    original = load_run(work / "orig")
    other = make_forget_split(original, "random", ratio=0.1, seed=5)
    run_unlearning("ft", original, other, TrainConfig(epochs=1, **API), work / "u_other")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(work / "u_good"), "--retrain", str(work / "u_other")])
    assert exit_info.value.code == 2 and "unlearned another split than the Retrain" in capsys.readouterr().err
    (work / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["evaluate", str(work / "u_good"), "--json", str(work / "metrics.json")])
    assert "pass --overwrite" in capsys.readouterr().err and (work / "metrics.json").read_text() == "{}"
    assert main(["evaluate", str(work / "u_good"), "--json", str(work / "metrics.json"), "--overwrite"]) == 0
    assert "u_good" in json.loads((work / "metrics.json").read_text())


def test_a_failed_step_keeps_only_a_resumable_partial(tmp_path):
    from coun_fast.runfolder import staged

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(b"finished")
    with pytest.raises(RuntimeError) as error:
        with staged(tmp_path / "run", overwrite=True) as folder:
            (folder / "checkpoint.pt").write_bytes(b"epoch 3")
            (folder / ".checkpoint.pt.0123abcd.tmp").write_bytes(b"half")
            raise RuntimeError("killed by an error in epoch 4")
    assert "--resume continues it" in error.value.__notes__[0]
    assert tree(tmp_path / "run") == {"model.pt": hashlib.sha256(b"finished").hexdigest()}
    assert tree(partial_path(tmp_path / "run")) == {"checkpoint.pt": hashlib.sha256(b"epoch 3").hexdigest()}
    with pytest.raises(ValueError):
        with staged(tmp_path / "run", overwrite=True, resume=True) as folder:
            raise ValueError("refused before any work")
    assert (partial_path(tmp_path / "run") / "checkpoint.pt").is_file()
    with staged(tmp_path / "run", overwrite=True) as folder:  # starts over: the partial is discarded
        assert list(folder.iterdir()) == []
        (folder / "model.pt").write_bytes(b"new")
    committed = tree(tmp_path / "run")
    assert committed.pop(".coun_fast-files.json")  # the ownership record (tests/test_ownership.py)
    assert committed == {"model.pt": hashlib.sha256(b"new").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]


# -- 2. resume refuses another run's checkpoint; resumes its own bit for bit -----------------------
@pytest.fixture(scope="module")
def killed_training(tmp_path_factory) -> Path:
    """A ``train`` of the synthetic set killed -9 after its first checkpoint (folder ``killed``)."""
    root = tmp_path_factory.mktemp("killed_training")
    process = start("train", "--dataset", "synthetic", *TINY, "--epochs", "30", "--lr", "0.05", "--out", "killed",
                    cwd=root)
    kill_after_first_checkpoint(process, root / "killed")
    return root


def test_resume_after_kill_is_bit_identical_and_clears_orphans(killed_training, tmp_path):
    shutil.copytree(killed_training, tmp_path, dirs_exist_ok=True)
    orphan = checkpoint_of(tmp_path / "killed").parent / ".checkpoint.pt.k3x9a1b2.tmp"  # a write cut by a kill
    orphan.write_bytes(b"half a checkpoint")
    arguments = ["train", "--dataset", "synthetic", *TINY, "--epochs", "30", "--lr", "0.05"]
    resumed = cli(*arguments, "--out", "killed", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = cli(*arguments, "--out", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    a, b = load_run(tmp_path / "killed").model.state_dict(), load_run(tmp_path / "whole").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.rglob("*.tmp")) and not partial_path(tmp_path / "killed").exists()


@pytest.mark.parametrize("arguments, fragments", [
    (["--dataset", "digits", "--model", "small_cnn"], ["another run", "data.name: 'synthetic' -> 'digits'"]),
    (["--dataset", "synthetic", "--model", "resnet18"], ["another run", "model.name: 'small_cnn' -> 'resnet18'"]),
], ids=["other-data-set", "other-architecture"])
def test_resume_refuses_a_checkpoint_of_another_run(killed_training, tmp_path, arguments, fragments):
    shutil.copytree(killed_training, tmp_path, dirs_exist_ok=True)
    state = checkpoint_of(tmp_path / "killed").parent
    before = tree(state)
    result = cli("train", *arguments, *TINY[2:], "--epochs", "30", "--lr", "0.05", "--out", "killed", "--resume",
                 cwd=tmp_path)
    refused(result, "cannot resume", *fragments)
    assert tree(state) == before and not (tmp_path / "killed" / "model.pt").exists()


@pytest.fixture(scope="module")
def concurrent(runs, tmp_path_factory) -> dict:
    """An FT unlearning run A on ``u_two``, a second run B on the same folder while A runs, then A
    killed -9 after its first checkpoint: what B said and A's process id."""
    root = tmp_path_factory.mktemp("concurrent")
    copy_runs(runs, root, "orig")
    first = start(*unlearn("--method", "ft", "--out", "u_two", epochs=400), cwd=root)
    deadline = time.monotonic() + 300
    while checkpoint_of(root / "u_two") is None:  # A is under way
        assert first.poll() is None and time.monotonic() < deadline, "run A did not start"
        time.sleep(0.05)
    second = cli(*unlearn("--method", "ft", "--split-seed", "1", "--out", "u_two"), cwd=root)
    alive = first.poll() is None
    kill_after_first_checkpoint(first, root / "u_two")
    return {"root": root, "second": second, "pid": first.pid, "alive": alive}


def test_second_run_on_a_folder_in_use_is_refused_at_once(concurrent):
    assert concurrent["alive"], "run A ended before run B was tried"
    refused(concurrent["second"], "is in use by process", f"process {concurrent['pid']} on ", "wait for that run")
    out = concurrent["root"] / "u_two"
    assert not out.exists()  # A was killed unfinished; nothing of B anywhere
    kept = {name for name in tree(partial_path(out)) if not name.endswith(".tmp")}  # a kill may cut a write
    assert kept == {"split.npz", "checkpoint.pt"}


def test_resume_refuses_another_method(concurrent, tmp_path):
    shutil.copytree(concurrent["root"], tmp_path, dirs_exist_ok=True)
    state = checkpoint_of(tmp_path / "u_two").parent
    before = tree(state)
    result = cli(*unlearn("--method", "ga", "--out", "u_two", "--resume", epochs=400), cwd=tmp_path)
    refused(result, "cannot resume", "method: 'ft' -> 'ga'")
    assert tree(state) == before


def test_the_cache_and_the_experiment_output_are_locked(tmp_path):
    from coun_fast.experiment import parse_config, run_experiment
    from coun_fast.runfolder import FolderBusy

    raw = {"name": "tiny", "data": {"dataset": "synthetic", "image_size": 8},
           "model": {"name": "small_cnn", "kwargs": {"widths": [8, 16]}},
           "original": {"epochs": 1, "batch_size": 64, "augment_backend": "cpu"},
           "unlearn": {"epochs": 1, "batch_size": 64, "augment_backend": "cpu"},
           "methods": ["ft"], "seeds": [0], "device": "cpu", "output": str(tmp_path / "out"),
           "cache": str(tmp_path / "cache")}
    config = parse_config(raw)
    with locked(tmp_path / "out"):
        with pytest.raises(ValueError, match=f"output: .* is in use by process {os.getpid()} "):
            run_experiment(config, progress=False, log=None)
    run_experiment(config, progress=False, log=None)
    entry = next(p for p in (tmp_path / "cache" / "original").iterdir() if not p.name.startswith("."))
    shutil.rmtree(entry)  # the entry is to be made again, while another process holds it
    with locked(entry, what="cache entry"):
        with pytest.raises(FolderBusy, match="cache entry .* is in use by process"):
            run_experiment(config, progress=False, log=None)


# -- 4. a split of another data set of the same size -----------------------------------------------
def test_a_split_of_another_data_set_of_the_same_size_is_refused(tmp_path):
    first = synthetic(num_classes=4, train_per_class=20, test_per_class=4, image_size=8, seed=0)
    second = synthetic(num_classes=4, train_per_class=20, test_per_class=4, image_size=8, seed=1)
    order = np.random.default_rng(0).permutation(len(second.train))  # same size, labels in another order
    second = type(second)(second.train.subset(order), second.test)
    for name, splits in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        save_npz(tmp_path / name / "data.npz", splits)
    for name in ("a", "b"):
        trained = cli("train", "--dataset", "npz", "--data", f"{name}/data.npz", *TINY, "--epochs", "1",
                      "--out", f"orig_{name}", cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr[-2000:]
    made = cli(*unlearn("--method", "ft", "--forget", "class", "--classes", "0", "--out", "u_b", original="orig_b"),
               cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    before = tree(tmp_path / "orig_a")
    result = cli(*unlearn("--method", "ft", "--split", "u_b/split.npz", "--out", "u_a", original="orig_a"),
                 cwd=tmp_path)
    refused(result, "the split was made on another data set", "train_labels")
    assert not (tmp_path / "u_a").exists() and tree(tmp_path / "orig_a") == before
    refused(cli("evaluate", "orig_a", "--split", "u_b/split.npz", cwd=tmp_path), "another data set")


# -- 5. file-system problems -----------------------------------------------------------------------
def _mounts_in_a_namespace() -> bool:
    """Whether this process may mount file systems in a private mount namespace (root, unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"], capture_output=True)
    return probe.returncode == 0


NAMESPACE = _mounts_in_a_namespace()


def _in_namespace(mount: str, command: list[str], cwd: Path, after: str = "") -> subprocess.CompletedProcess:
    """``command`` (a coun-fast call) after ``mount`` in a private mount namespace (gone when it
    ends); its stdout, stderr and exit code come back as usual; ``after`` runs there too."""
    quoted = " ".join(shlex.quote(str(c)) for c in [sys.executable, "-m", "coun_fast", *command])
    script = f"set -e; {mount}; set +e; {quoted}; code=$?; {after or 'true'}; exit $code"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=cwd,
                          env=environment(cwd), capture_output=True, text=True, timeout=600)


def _read_only(folder: Path, command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if NAMESPACE:
        return _in_namespace(f"mount --bind {folder} {folder}; mount -o remount,bind,ro {folder}", command, cwd)
    if os.geteuid() == 0:
        pytest.skip("root without a private mount namespace: no way to make a read-only folder")
    folder.chmod(0o555)
    try:
        return cli(*command, cwd=cwd)
    finally:
        folder.chmod(0o755)


def test_read_only_target(work):
    shelf = work / "shelf"
    copy_runs(work, shelf, "u_good")
    before = tree(shelf)
    fresh = _read_only(shelf, [*TRAIN, "--out", "shelf/new"], work)
    refused(fresh, "read-only" if NAMESPACE else "permission", "shelf")  # before any training
    assert tree(shelf) == before and not (shelf / "new").exists() and fresh.stdout == ""
    overwrite = _read_only(shelf, unlearn("--method", "ft", "--out", "shelf/u_good", "--overwrite"), work)
    refused(overwrite, "shelf")
    assert tree(shelf) == before


def test_output_below_a_file(work):
    (work / "notes.txt").write_text("a file")
    refused(cli(*TRAIN, "--out", "notes.txt/run", cwd=work), "below a file", "notes.txt")
    assert (work / "notes.txt").read_text() == "a file"


@pytest.mark.skipif(not NAMESPACE, reason="needs root and a private mount namespace for a small tmpfs")
def test_disk_full_beside_a_finished_run(work):
    disk = work / "disk"
    disk.mkdir()
    used = sum(p.stat().st_size for p in (work / "u_good").iterdir())
    listing = work / "listing.json"
    lister = (f"{sys.executable} -c \"import json, sys; from pathlib import Path; d = Path(sys.argv[1]); "
              f"print(json.dumps(sorted(p.relative_to(d).as_posix() for p in d.rglob('*'))))\" {disk} > {listing}")
    hasher = (f"{sys.executable} -c \"import hashlib, json, sys; from pathlib import Path; d = Path(sys.argv[1]); "
              f"print(json.dumps({{p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}}))\" "
              f"{disk}/u_good > {work}/after.json")
    result = _in_namespace(
        f"mount -t tmpfs -o size={used // 1024 + 300}k tmpfs {disk}; cp -a {work}/u_good {disk}/u_good",
        unlearn("--method", "ft", "--split-seed", "1", "--out", "disk/u_new"), work, after=f"{lister}; {hasher}")
    refused(result, "No space left on device", "u_new")
    assert json.loads((work / "after.json").read_text()) == {k: v for k, v in tree(work / "u_good").items()}
    assert json.loads(listing.read_text()) == [".u_new.lock", "u_good", "u_good/.coun_fast-files.json",
                                               "u_good/checkpoint.pt", "u_good/model.pt", "u_good/split.npz"]
    # nothing half-written, no temporary file


def test_disk_full_in_process(work, monkeypatch, capsys):
    """A full disk during an --overwrite, without privileges: fsync of a checkpoint reports ENOSPC (as on NFS)."""
    real = os.fsync

    def fsync(descriptor):
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{descriptor}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(descriptor)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.chdir(work)
    before = tree(work / "u_good")
    with pytest.raises(SystemExit) as exit_info:
        main(unlearn("--method", "ft", "--split-seed", "1", "--out", "u_good", "--overwrite"))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "No space left on device" in error[0]
    assert tree(work / "u_good") == before
    assert not partial_path(work / "u_good").exists() and not list(work.rglob("*.tmp"))


@pytest.mark.parametrize("device", ["gpu0", "cuda:9" if torch.cuda.is_available() else "cuda"])
def test_bad_device_is_one_line(work, device, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*TRAIN, "--out", str(work / "x"), "--device", device])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and device in error[0] and not (work / "x").exists()


# -- 6. validation before compute ------------------------------------------------------------------
@pytest.mark.parametrize("option, message", [(["--ratio", "0"], "ratio must be in (0, 1)"),
                                             (["--temperature", "-1"], "temperature must be a finite number > 0"),
                                             (["--model", "vit_small_data"], "does not take the 8x8 images"),
                                             (["--seed", "-1"], "seed must be")])
def test_demo_checks_everything_before_training(tmp_path, option, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--image-size", "8", "--original-epochs", "1", "--unlearn-epochs", "1", "--device", "cpu",
              "--no-progress", "--out", str(tmp_path / "demo"), *option])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and "training" not in captured.out
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_to_replace_a_finished_report(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--no-progress"])
    assert "--overwrite" in capsys.readouterr().err
    assert tree(tmp_path / "demo") == {"results.json": hashlib.sha256(b"{}").hexdigest()}


@pytest.mark.parametrize("change, message", [
    ({"methods": [{"name": "coun", "hparams": {"lam": "one"}}]}, "methods[0].hparams.lam: lam must be"),
    ({"scenario": {"kind": "class", "classes": ["truck"]}}, "scenario: unknown class name 'truck'"),
    ({"methods": ["ssd+cl"]}, "methods[0].name: there is no 'ssd+cl'"),
    ({"methods": [{"name": "cu", "hparams": {"early_stop": "yes"}}]}, "early_stop must be true or false"),
    ({"sweep": {"seed": 9, "grid": {"coun": {"temperature": [0.1, 0]}}}, "methods": ["coun"]},
     "sweep.grid.coun.temperature[1]: temperature must be"),
    ({"scenario": {"kind": "random", "ratio": 0.0001}}, "scenario: ratio=0.0001"),
    ({"model": {"name": "vit_small_data"}}, "model: model 'vit_small_data' does not take"),
    ({"original": {"augment_backend": "gpu"}}, "original.augment_backend must be one of"),
    ({"device": "gpu0"}, "device: device must be cpu, cuda or cuda:N"),
    ({"output": "notes.txt/out"}, "output: output lies below a file"),
])
def test_run_check_catches_what_the_run_would_reject(tmp_path, monkeypatch, change, message, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a file")
    raw = {"data": {"dataset": "digits", "image_size": 8}, "model": {"name": "small_cnn"}, "methods": ["ft"],
           "device": "cpu", "output": "out", "cache": "cache", **change}
    import yaml

    (tmp_path / "e.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "e.yaml", "--check"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.yaml", "notes.txt"]  # nothing written


@pytest.mark.parametrize("method", ["ssd+cl", "coun+cl"])
def test_method_choices_offer_no_plug_in_that_would_be_refused(method, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["unlearn", "--method", method, "--original", "x", "--out", "y"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"invalid choice: '{method}'" in error
    offered = error.split("choose from", 1)[1]
    assert "'ft+cl'" in offered and "'ssd+cl'" not in offered and "'coun+cl'" not in offered


def test_hparam_values_are_typed(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as exit_info:
        main(unlearn("--method", "cu", "--hparam", "early_stop=maybe", "--out", str(work / "u")))
    assert exit_info.value.code == 2 and "early_stop" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(unlearn("--method", "cu", "--hparam", "omega=0", "--out", str(work / "u")))
    assert "omega must be a whole number >= 1" in capsys.readouterr().err
    assert not (work / "u").exists()  # refused before anything was written


# -- 7. safe loading -------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a malicious model.pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_model_file_with_code_in_it_is_refused_unrun(work):
    marker = work / "pwned"
    evil = work / "evil"
    evil.mkdir()
    state = torch.load(work / "orig" / "model.pt", weights_only=True)  # format 2 records are plain values
    state["build_args"] = _Payload(marker)
    torch.save(state, evil / "model.pt")
    refused(cli("evaluate", "evil", "--split", "u_good/split.npz", cwd=work), "open, which a coun_fast file never holds",
            "refusing to load it")
    assert not marker.exists()
    checkpoint = partial_path(work / "u_evil")
    checkpoint.mkdir()
    torch.save({"format_version": 2, "config": _Payload(marker)}, checkpoint / "checkpoint.pt")
    refused(cli(*unlearn("--method", "ft", "--out", "u_evil", "--resume"), cwd=work), "refusing to load it")
    assert not marker.exists()


def test_files_of_the_first_format_still_load(work):
    """Format 1 records held NumPy index arrays (now allow-listed for reading only)."""
    state = torch.load(work / "orig" / "model.pt", weights_only=True)
    state["format_version"] = 1
    del state["digest"]  # format 3's; a file of format 1 has none
    state["record"]["train_indices"] = np.arange(len(state["record"]["train_indices"]))
    old = work / "old"
    old.mkdir()
    torch.save(state, old / "model.pt")
    assert np.array_equal(load_run(old).record["train_indices"], np.arange(1438))


def test_damaged_model_file_is_a_clear_error(work):
    from coun_fast import checkpoint

    state = checkpoint.load(work / "orig" / "model.pt")
    checkpoint.save(work / "odd.pt", {**state, "model": [1, 2, 3]})
    with pytest.raises(ValueError, match="odd.pt' is damaged: its 'model' is not a mapping"):
        load_run(work / "odd.pt")


# -- 8. small things -------------------------------------------------------------------------------
def test_files_follow_the_umask(tmp_path, runs):
    old = os.umask(0o027)
    try:
        original = load_run(runs / "orig")
        split = make_forget_split(original, "random", ratio=0.1, seed=0)
        run_unlearning("ft", original, split, TrainConfig(epochs=1, **API), tmp_path / "u")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "u").iterdir()}
    assert modes == {"model.pt": 0o640, "checkpoint.pt": 0o640, "split.npz": 0o640, ".coun_fast-files.json": 0o640}
    assert stat.S_IMODE((tmp_path / "u").stat().st_mode) == 0o750


def test_random_bytes_as_a_split_file_name_the_file(work, capsys):
    (work / "noise.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(work / "u_good"), "--split", str(work / "noise.npz")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "noise.npz' is not a split file" in error and "pickled" not in error


def test_a_cifar10_file_is_not_cifar100(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COUN_FAST_CACHE", str(tmp_path / "cache"))
    save_npz(tmp_path / "cifar10_jpeg.npz", synthetic(num_classes=10, train_per_class=2, test_per_class=1,
                                                      image_size=8))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "cifar100", "--data", str(tmp_path / "cifar10_jpeg.npz"), "--out",
              str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "dataset 'cifar100' has 100 or 20 classes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_help_says_percent_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "%%" not in text and "50% and 75%" in " ".join(text.split())

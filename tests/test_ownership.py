"""Nothing coun_fast did not write is ever replaced or removed (issue 25, items 1 and 5).

A folder is replaced (``--overwrite``, a stale cache entry or method folder, a packed data set)
only when every entry in it is something coun_fast wrote there, unchanged since: the ownership
record written at commit (:mod:`coun_fast.ownership`) is the authority, and a folder without one
(written by an older coun_fast) is judged by its file names. A partial folder holding a user's
file is not deleted either. A lock's holder file left by a killed run is removed by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from coun_fast import ownership
from coun_fast.cli import main
from coun_fast.runfolder import RunFolderError, is_busy, lock_path, partial_path, staged

from test_run_folders import API, TRAIN, cli, copy_runs, refused, runs, tree, unlearn  # noqa: F401 (fixture)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def work(tmp_path, runs) -> Path:  # noqa: F811
    copy_runs(runs, tmp_path, "orig", "u_good")
    return tmp_path


# -- the two cases, through the command line ---------------------------------------------
def test_overwrite_refuses_a_users_folder_that_holds_a_config_json(work):
    mine = work / "my project"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    (mine / "thesis.tex").write_text("years of work")
    before = tree(mine)
    line = refused(cli(*TRAIN, "--dataset", "digits", "--overwrite", "--out", "my project", cwd=work),
                   "'thesis.tex', which coun_fast did not write", "never replaced")
    assert "my project" in line
    assert tree(mine) == before and not partial_path(mine).exists()


def test_overwrite_refuses_a_finished_run_where_the_user_added_a_file(work):
    (work / "u_good" / "notes.txt").write_text("what I saw")
    before = tree(work / "u_good")
    refused(cli(*unlearn("--method", "ft", "--overwrite", "--out", "u_good"), cwd=work),
            "'notes.txt', which coun_fast did not write")
    assert tree(work / "u_good") == before


def test_overwrite_refuses_a_file_changed_after_coun_fast_wrote_it(work, capsys):
    split = work / "u_good" / "split.npz"
    data = bytearray(split.read_bytes())
    data[-1] ^= 1
    split.write_bytes(bytes(data))  # same size, new content and modification time
    before = tree(work / "u_good")
    with pytest.raises(SystemExit) as exit_info:
        main([*unlearn("--method", "ft", "--overwrite", "--out", str(work / "u_good"))])
    assert exit_info.value.code == 2
    assert "'split.npz', which was changed after coun_fast wrote it" in capsys.readouterr().err
    assert tree(work / "u_good") == before


def test_overwrite_replaces_an_unchanged_run_and_records_the_new_one(work):
    assert ownership.foreign(work / "u_good") is None
    result = cli(*unlearn("--method", "ft", "--split-seed", "2", "--overwrite", "--out", "u_good"), cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((work / "u_good" / ownership.RECORD).read_text())
    assert set(record["files"]) == {p.name for p in (work / "u_good").iterdir()} - {ownership.RECORD}
    assert ownership.foreign(work / "u_good") is None


# -- the rule, everywhere something is replaced or removed ---------------------------------------
def test_a_copied_run_folder_is_still_coun_fasts(work, tmp_path_factory):
    """``cp -r`` changes modification times, not content: the record's hashes decide."""
    import shutil

    copy = tmp_path_factory.mktemp("copy") / "u_copy"
    shutil.copytree(work / "u_good", copy, copy_function=shutil.copyfile)
    assert ownership.foreign(copy) is None


def test_a_folder_from_before_ownership_records_is_judged_by_its_names(tmp_path):
    old = tmp_path / "old"
    (old / "original").mkdir(parents=True)
    for name in ("model.pt", "checkpoint.pt", "split.npz", "metrics.json", "run_key.txt"):
        (old / name).write_bytes(b"x")
    (old / "original" / "model.pt").write_bytes(b"x")
    assert ownership.foreign(old) is None
    (old / "original" / "draft.md").write_text("mine")
    assert ownership.foreign(old) == "'original/draft.md', which coun_fast did not write"


def test_a_users_folder_inside_a_recorded_one_is_foreign(work):
    (work / "u_good" / "plots").mkdir()
    assert ownership.foreign(work / "u_good") == "'plots/', which coun_fast did not write"


def test_staged_replacement_refuses_a_users_file_as_the_runner_and_cache_do(work):
    """The experiment runner's method folders and the cache entries are replaced through
    ``staged(overwrite=True, resume="auto")``: a user's file there stops the replacement."""
    (work / "u_good" / "mine.txt").write_text("keep me")
    before = tree(work / "u_good")
    with pytest.raises(RunFolderError, match="'mine.txt', which coun_fast did not write"):
        with staged(work / "u_good", overwrite=True, resume="auto"):
            raise AssertionError("must not start")
    assert tree(work / "u_good") == before


def test_a_partial_folder_holding_a_users_file_is_not_deleted(work, capsys):
    partial = partial_path(work / "fresh")
    partial.mkdir()
    (partial / "checkpoint.pt").write_bytes(b"old")
    (partial / "diary.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main([*TRAIN, "--dataset", "digits", "--overwrite", "--out", str(work / "fresh")])
    assert exit_info.value.code == 2 and "'diary.txt', which coun_fast did not write" in capsys.readouterr().err
    assert (partial / "diary.txt").read_text() == "mine" and (partial / "checkpoint.pt").read_bytes() == b"old"


def test_data_pack_overwrite_refuses_a_packed_set_with_a_users_file(tmp_path, capsys):
    from coun_fast.data.embedded import synthetic
    from coun_fast.data.packed import save_npz

    data = synthetic(num_classes=4, train_per_class=10, test_per_class=5, image_size=8)
    source = save_npz(tmp_path / "small.npz", data)
    assert main(["data", "pack", str(source), str(tmp_path / "packed"), "--no-progress"]) == 0
    assert ownership.foreign(tmp_path / "packed") is None
    assert main(["data", "pack", str(source), str(tmp_path / "packed"), "--overwrite",
                 "--no-progress"]) == 0
    (tmp_path / "packed" / "README.txt").write_text("my notes")
    before = tree(tmp_path / "packed")
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "pack", str(source), str(tmp_path / "packed"), "--overwrite", "--no-progress"])
    assert exit_info.value.code == 2 and "'README.txt', which coun_fast did not write" in capsys.readouterr().err
    assert tree(tmp_path / "packed") == before


# -- 5. a killed run's holder file ---------------------------------------------------------------
def test_the_holder_file_of_a_killed_run_is_removed_by_the_next_run(work):
    target = work / "killed"
    holder = lock_path(target).with_name(f".{target.name}.holder")
    script = textwrap.dedent(f"""
        import os, signal, sys
        from coun_fast.runfolder import locked
        with locked({str(target)!r}):
            print("locked", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert process.returncode == -signal.SIGKILL and "locked" in process.stdout
    assert holder.is_file(), "the killed run should have left its holder file"
    assert is_busy(target) is None  # the lock died with its process ...
    assert not holder.exists()  # ... and the stale holder file with it
    # and through a run that is refused before it takes the lock
    holder.write_text(json.dumps({"pid": 1, "host": "h", "since": "t", "command": "c"}))
    target.mkdir()
    (target / "model.pt").write_bytes(b"x")
    refused(cli(*TRAIN, "--dataset", "digits", "--out", "killed", cwd=work), "already holds a finished run")
    assert not holder.exists()


def test_an_experiment_refuses_an_output_folder_holding_a_users_file(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "cpu_smoke", "--output", str(mine), "--cache", str(tmp_path / "cache"), "--check"])
    assert exit_info.value.code == 2
    assert "output: " in (error := capsys.readouterr().err) and "'thesis.tex', which coun_fast did not write" in error
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]

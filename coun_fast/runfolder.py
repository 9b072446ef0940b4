"""Run folders written as a unit, under an exclusive lock.

A step that writes a run folder ``OUT`` (train, unlearn, the demo, the experiment runner and its
cache) does it through :func:`staged`:

1. it takes the exclusive lock of ``OUT``, the file ``.OUT.lock`` beside it (:func:`locked`); a
   second run on the same folder is refused at once, with an error that names the holder
   (process, host, command, start time); the lock is released when the process ends, however
   it ends;
2. it checks ``OUT`` (:func:`check_target`): a finished run there is replaced only with
   ``overwrite=True`` (``--overwrite``), and only when every entry in it is something coun_fast
   wrote there, unchanged since (:mod:`coun_fast.ownership`: the ownership record
   ``.coun_fast-files.json`` written at commit is the authority); a folder holding anything else (a
   user's file, a file edited since) is never replaced, and the error names the first such entry;
3. it works in the sibling ``.OUT.partial/`` (where ``checkpoint.pt`` of a killed run waits for
   ``--resume``), and only when the step succeeds writes the ownership record into it and renames
   it to ``OUT`` (the replaced run is moved aside first and deleted after). A failed or refused
   step leaves ``OUT`` exactly as it was; its partial folder is kept only when it holds a
   checkpoint to resume, and deleted otherwise. A partial folder (or anything else in the way)
   holding files coun_fast did not write is never deleted either: the step is refused.

The lock's holder file ``.OUT.holder`` (who holds the lock, for the error of a second run) is
removed when the lock is released; one left by a killed run is removed by the next process that
finds the lock free.

In a distributed run (``torchrun``), rank 0 alone does all of this (:func:`staged_by_main`): the
other ranks take no lock, create no partial folder and write nothing; they wait until rank 0 has
prepared the folder, and at the end until it has committed it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

import filelock

from coun_fast import distributed, ownership
from coun_fast.files import fsync_folder, remove_orphans, write_text_atomic

CHECKPOINT = "checkpoint.pt"


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (finished, unfinished, holds other files)."""


class FolderBusy(RunFolderError):
    """Another run holds the folder's lock."""


def absolute(target: str | os.PathLike) -> Path:
    """``target`` as an absolute path with symbolic links resolved (so the partial folder and the
    lock sit beside the real folder)."""
    path = Path(target).expanduser().resolve()
    if path == Path(path.anchor):
        raise RunFolderError(f"a run folder cannot be the file system's root ({path})")
    return path


def partial_path(target: str | os.PathLike) -> Path:
    """Where an unfinished run of ``target`` is written: ``.NAME.partial`` beside it."""
    target = absolute(target)
    return target.parent / f".{target.name}.partial"


def lock_path(target: str | os.PathLike) -> Path:
    target = absolute(target)
    return target.parent / f".{target.name}.lock"


def _holder_path(lock: Path) -> Path:
    return lock.with_name(lock.name[: -len(".lock")] + ".holder")


def _holder(lock: Path) -> str:
    """Who holds ``lock``, in words (read from the holder file it wrote)."""
    try:
        info = json.loads(_holder_path(lock).read_text())
        return (f"process {info['pid']} on {info['host']} since {info['since']} "
                f"({info['command']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def locked(target: str | os.PathLike, *, what: str = "run folder") -> Iterator[Path]:
    """Hold the exclusive lock of ``target`` (created with its missing parent folders) for the
    block; yields ``target`` as an absolute path. Raises :class:`FolderBusy` at once, naming the
    holder, when another process (or another part of this one) holds it."""
    target = absolute(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(target)
    lock = filelock.FileLock(str(path), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise FolderBusy(f"{what} {str(target)!r} is in use by {_holder(path)}; wait for that run to end or choose "
                         "another folder") from None
    holder = _holder_path(path)
    try:
        write_text_atomic(holder, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "python",
        }))
        yield target
    finally:
        holder.unlink(missing_ok=True)  # before the release: the next holder writes its own
        lock.release()


def is_busy(target: str | os.PathLike) -> str | None:
    """Who holds ``target``'s lock, or None when it is free; creates nothing."""
    path = lock_path(target)
    if not path.is_file():
        return None
    lock = filelock.FileLock(str(path), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        return _holder(path)
    except OSError:
        return None  # cannot even open it: the run will say why
    try:
        _holder_path(path).unlink(missing_ok=True)  # free: a holder file left by a killed run is stale
    except OSError:
        pass
    finally:
        lock.release()
    return None


def _any_kind(folder: Path) -> bool:
    return True


def check_target(target: str | os.PathLike, *, overwrite: bool = False, resume: bool = False,
                 what: str = "run folder", free: bool = True, ours: Callable[[Path], bool] = _any_kind) -> Path:
    """Check that a run may write ``target``; returns it as an absolute path.

    Raises :class:`FolderBusy` when another run holds its lock (``free``: check that; False for
    the holder itself); :class:`RunFolderError` when ``target`` is a file; holds anything
    coun_fast did not write there, or changed since (:func:`coun_fast.ownership.foreign`: never
    replaced; the error names the entry), or a folder of another kind (``ours``: e.g. a packed
    data set may only replace a packed data set); or holds a finished run and ``overwrite`` is
    False; or when an unfinished run waits in its partial folder and neither ``resume`` nor
    ``overwrite`` says what to do with it, or the partial folder holds files coun_fast did not
    write. An empty folder is fine. Reads only; creates nothing.
    """
    target = absolute(target)
    # Only rank 0 of a distributed run takes the lock: another rank would see it held by rank 0.
    holder = is_busy(target) if free and distributed.is_main() else None
    if holder is not None:
        raise FolderBusy(f"{what} {str(target)!r} is in use by {holder}; wait for that run to end or choose "
                         "another folder")
    if target.exists() and not target.is_dir():
        raise RunFolderError(f"{what} {str(target)!r} is a file, not a folder")
    if target.is_dir() and any(target.iterdir()):
        stranger = ownership.foreign(target)
        if stranger is not None:
            raise RunFolderError(f"{what} {str(target)!r} already exists and holds {stranger}; choose another "
                                 "folder (a folder holding anything but unchanged coun_fast outputs is never replaced)")
        if not ours(target):
            raise RunFolderError(f"{what} {str(target)!r} already exists and holds another kind of coun_fast output; "
                                 "choose another folder")
        if not overwrite:
            if resume:
                raise RunFolderError(f"{what} {str(target)!r} holds a finished run: there is nothing to resume "
                                     "(--overwrite runs it again)")
            raise RunFolderError(f"{what} {str(target)!r} already holds a finished run; pass --overwrite to "
                                 "replace it (it stays untouched until the new run succeeds) or choose another "
                                 "folder")
    partial = partial_path(target)
    _check_removable(partial, what)
    if not resume and not overwrite and (partial / CHECKPOINT).is_file():
        raise RunFolderError(f"{what} {str(target)!r} has an unfinished run in {str(partial)!r}; pass --resume "
                             "to continue it or --overwrite to start over")
    return target


def _check_removable(work: Path, what: str) -> None:
    """RunFolderError unless ``work`` (a partial folder, which a run may delete) is absent or a
    folder holding only what coun_fast writes there."""
    if not (work.exists() or work.is_symlink()):
        return
    stranger = "something that is not a folder" if work.is_symlink() or not work.is_dir() else ownership.foreign(work)
    if stranger is not None:
        raise RunFolderError(f"{what}: the working folder {str(work)!r} that coun_fast uses holds {stranger}; move "
                             "it away (coun_fast never deletes what it did not write)")


def _prepare(work: Path, target: Path, resume, overwrite: bool, belongs) -> None:
    """Make ``work`` the folder to write: a kept partial run to continue, or a new empty one."""
    for stale in target.parent.glob(f".{target.name}.replaced-*"):  # an interrupted commit's leftovers
        if ownership.foreign(stale) is None:
            shutil.rmtree(stale, ignore_errors=True)
    if work.is_dir():
        keep = False
        if (work / CHECKPOINT).is_file():
            if resume is True:
                if belongs is not None:
                    belongs(work)  # a partial of another run: the error says what differs; nothing is touched
                keep = True
            elif resume == "auto":
                keep = _accepted(belongs, work)
            # else: overwrite (check_target refused the other case)
        if not keep:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    remove_orphans(work)


def _accepted(belongs, work: Path) -> bool:
    try:
        if belongs is not None:
            belongs(work)
    except ValueError:
        return False
    return True


def _commit(work: Path, target: Path) -> None:
    """Record what ``work`` holds (:func:`coun_fast.ownership.record`) and rename it to ``target``;
    a replaced ``target`` is moved aside first, deleted after."""
    remove_orphans(work)
    ownership.record(work)
    if target.exists():
        aside = target.parent / f".{target.name}.replaced-{secrets.token_hex(8)}"
        os.rename(target, aside)
        try:
            os.rename(work, target)
        except BaseException:
            os.rename(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(work, target)
    fsync_folder(target.parent)


def note(error: BaseException, text: str) -> None:
    """Attach ``text`` to ``error`` (``__notes__``, as ``add_note`` does); the CLI prints it after the error."""
    notes = getattr(error, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        try:
            error.__notes__ = notes
        except AttributeError:
            return
    notes.append(text)


@contextlib.contextmanager
def staged(target: str | os.PathLike, *, overwrite: bool = False, resume: bool | str = False,
           belongs: Callable[[Path], None] | None = None, lock: bool = True,
           what: str = "run folder", ours: Callable[[Path], bool] = _any_kind) -> Iterator[Path]:
    """Write the run folder ``target`` as a unit; yields the folder to write into.

    Args:
        target: the run folder to create (or to replace, with ``overwrite``).
        overwrite: replace a finished run at ``target`` when the step succeeds, and discard an
            unfinished one.
        resume: True continues an unfinished run (its partial folder with ``checkpoint.pt``),
            after ``belongs(partial)`` accepted it (it raises ValueError saying what differs);
            ``"auto"`` continues it when ``belongs`` accepts it and starts over otherwise (for
            folders whose owner names them by content: the experiment runner and cache); False
            refuses to discard one unless ``overwrite``.
        belongs: the check that a partial run is this run's (see ``resume``).
        lock: take ``target``'s lock (False when the caller holds a lock over it already).
        what: how errors name the folder.
        ours: whether an existing folder (that coun_fast wrote) is of the kind this step may replace.

    The checks of :func:`check_target` run under the lock. On an error in the block, ``target``
    is untouched; the partial folder is kept when it holds a checkpoint (the error then notes
    that ``--resume`` continues it) and deleted otherwise.
    """
    target = absolute(target)
    holding = locked(target, what=what) if lock else contextlib.nullcontext(target)
    with holding:
        check_target(target, overwrite=overwrite, resume=bool(resume), what=what, free=False, ours=ours)
        work = partial_path(target)
        _prepare(work, target, resume, overwrite, belongs)
        try:
            yield work
        except BaseException as error:
            if (work / CHECKPOINT).is_file():
                remove_orphans(work)
                note(error, f"the unfinished run is kept in {str(work)!r}; --resume continues it")
            else:
                shutil.rmtree(work, ignore_errors=True)
            raise
        _commit(work, target)


@contextlib.contextmanager
def staged_by_main(target: str | os.PathLike, **options) -> Iterator[Path]:
    """:func:`staged` (with its ``options``) on rank 0 of a distributed run; every rank gets the
    working folder's path once rank 0 has prepared it (a refusal there is raised on every rank),
    only rank 0 writes into it, and after the block every rank waits until rank 0 has committed
    it (a failure to commit is raised on every rank). Outside a distributed job, :func:`staged`
    itself."""
    if not distributed.active():
        with staged(target, **options) as work:
            yield work
        return
    with contextlib.ExitStack() as stack:  # on rank 0 it holds the staged folder (and its lock)
        work = distributed.on_main(lambda: stack.enter_context(staged(target, **options)),
                                   f"prepare the run folder {str(target)!r}")
        yield work
        distributed.on_main(stack.close, f"commit the run folder {str(target)!r}")


__all__ = ["CHECKPOINT", "FolderBusy", "RunFolderError", "absolute", "check_target", "is_busy", "locked", "note",
           "partial_path", "staged", "staged_by_main"]

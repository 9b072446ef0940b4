"""Which files in a folder coun_fast wrote: the authority for replacing or removing anything.

coun_fast replaces a folder (``--overwrite``, a stale cache entry or method folder) only when
every entry in it is something coun_fast wrote there. The authority is the folder's *ownership
record*, ``.coun_fast-files.json``, written by :func:`record` when the folder is committed (see
:mod:`coun_fast.runfolder`): every file below the folder (recursively) with its size,
modification time and SHA-256, and every folder. :func:`foreign` then names the first entry that
is not in the record (a user's ``notes.txt``) or differs from it (a file edited since: its size,
or its content when its modification time changed).

Folders written before ownership records existed (or whose record is unreadable) are judged by
name alone (:data:`LEGACY_NAMES`): every file must bear a name that only coun_fast writes into
such folders; anything else makes the folder foreign.

This module uses the standard library only, so every layer of the package may import it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from coun_fast.digest import file_sha256
from coun_fast.files import is_temporary, write_text_atomic

RECORD = ".coun_fast-files.json"
"""The ownership record's name inside a committed folder."""
FORMAT = "coun_fast.files"
VERSION = 1

LEGACY_NAMES = frozenset({
    "model.pt", "checkpoint.pt", "split.npz", "metrics.json", "results.json", "results.md", "results.csv",
    "run_key.txt", "key.json", "config.json", "gaps.png", "avg_gap.png", "ua_mia.png", "curves.png",
    "best_hparams.json", "manifest.json",
})
"""The file names coun_fast wrote into run folders, cache entries and packed data sets before
ownership records existed (plus shard files, :data:`_LEGACY_SHARD`)."""
_LEGACY_SHARD = re.compile(r"^(train|test)-\d{5}\.shard$")


def _walk(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """``(files, folders, others)`` below ``folder`` as sorted POSIX paths relative to it, without
    following symbolic links (a link, a socket, ... is an "other"); the record itself left out."""
    files, folders, others = [], [], []
    for root, dirs, names in os.walk(folder, followlinks=False):
        base = Path(root)
        for name in list(dirs):
            path = base / name
            if path.is_symlink():
                others.append(path.relative_to(folder).as_posix())
                dirs.remove(name)
            else:
                folders.append(path.relative_to(folder).as_posix())
        for name in names:
            path = base / name
            relative = path.relative_to(folder).as_posix()
            if relative == RECORD:
                continue
            (files if path.is_file() and not path.is_symlink() else others).append(relative)
    return sorted(files), sorted(folders), sorted(others)


def record(folder: str | os.PathLike) -> Path:
    """Write ``folder``'s ownership record: every file below it (size, modification time,
    SHA-256) and every folder. Call it when coun_fast has written the whole folder and holds its
    lock, just before the folder is committed. Returns the record's path."""
    folder = Path(folder)
    files, folders, others = _walk(folder)
    if others:
        raise ValueError(f"{str(folder / others[0])!r} is not a plain file or folder; coun_fast writes none")
    entries = {}
    for name in files:
        stat = (folder / name).stat()
        entries[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(folder / name)}
    text = json.dumps({"format": FORMAT, "version": VERSION, "files": entries, "folders": folders}, indent=1)
    return write_text_atomic(folder / RECORD, text)


def _read_record(folder: Path) -> dict | None:
    """The folder's ownership record, or None when it has none or an unreadable one."""
    try:
        stored = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(stored, dict) and stored.get("format") == FORMAT and isinstance(stored.get("files"), dict)
            and isinstance(stored.get("folders"), list)):
        return None
    return stored


def _changed(path: Path, entry: object) -> bool:
    """Whether the file at ``path`` differs from its record ``entry`` (size; content when the
    modification time moved)."""
    if not isinstance(entry, dict):
        return True
    stat = path.stat()
    if stat.st_size != entry.get("size"):
        return True
    return stat.st_mtime_ns != entry.get("mtime_ns") and file_sha256(path) != entry.get("sha256")


def _legacy_name(name: str) -> bool:
    return name in LEGACY_NAMES or name == RECORD or bool(_LEGACY_SHARD.match(name)) or is_temporary(name)


def foreign(folder: str | os.PathLike) -> str | None:
    """The first entry below ``folder`` that coun_fast did not write there, in words (``"'notes.txt',
    which coun_fast did not write"``), or None when coun_fast wrote everything in it (an empty or
    missing folder included). A folder with an ownership record is judged by it; one without, entry
    by entry (its files by name, see :data:`LEGACY_NAMES`; its folders in the same way, each by its
    own record if it has one). Reads only."""
    folder = Path(folder)
    return _foreign(folder, folder) if folder.is_dir() else None


def _foreign(folder: Path, top: Path) -> str | None:
    def shown(path: Path, suffix: str = "") -> str:
        return repr(path.relative_to(top).as_posix() + suffix)

    stored = _read_record(folder)
    if stored is None:  # written before ownership records: names decide
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
                return f"{shown(entry)}, which is not a file coun_fast writes"
            if entry.is_dir():
                found = _foreign(entry, top)
                if found is not None:
                    return found
            elif not _legacy_name(entry.name):
                return f"{shown(entry)}, which coun_fast did not write"
        return None
    files, folders, others = _walk(folder)
    if others:
        return f"{shown(folder / others[0])}, which is not a file coun_fast writes"
    known, known_folders = stored["files"], set(stored["folders"])
    for name in folders:
        if name not in known_folders:
            return f"{shown(folder / name, '/')}, which coun_fast did not write"
    for name in files:
        if name not in known:
            if is_temporary(name.rsplit("/", 1)[-1]):  # a killed writer's temporary file (coun_fast's own)
                continue
            return f"{shown(folder / name)}, which coun_fast did not write"
        if _changed(folder / name, known[name]):
            return f"{shown(folder / name)}, which was changed after coun_fast wrote it"
    return None


__all__ = ["LEGACY_NAMES", "RECORD", "foreign", "record"]

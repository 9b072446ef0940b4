"""Files written whole or not at all, with normal permissions, and clear words for file-system errors.

:func:`write_atomic` writes to a temporary sibling (``.NAME.<random>.tmp``, created with mode
0666 so the process's umask applies, as for any other file) and renames it over the target, so a
reader (or a later run) sees the old file or the new one, never a mix, and a failed write leaves
the old file untouched and no temporary file behind. A process killed mid-write can leave its
temporary file: :func:`remove_orphans` deletes them (call it only while holding the folder's lock).

This module uses the standard library only, so every layer of the package may import it.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path

_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_-]+\.tmp$")  # .NAME.<random>.tmp (also older coun_fast's names)


def temporary_name(path: Path) -> Path:
    """A fresh temporary sibling of ``path``: ``.NAME.<16 hex digits>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`write_atomic`'s temporary files (``.NAME.<random>.tmp``)."""
    return bool(_TEMPORARY.match(name))


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename); returns the path.

    The folder must exist. Raises OSError (the file system's own: read-only, no space, not a
    folder...) after removing the temporary file; the old ``path``, if any, is untouched.
    """
    path = Path(path)
    temporary = temporary_name(path)
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:  # name the file the caller asked for, not the temporary one
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.filename is None:  # a failed write or fsync names no file: say which
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_atomic` of ``text`` in UTF-8."""
    return write_atomic(path, text.encode("utf-8"))


def remove_orphans(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`write_atomic` left in ``folder`` when a process died
    mid-write (``.NAME.<random>.tmp``); returns what was deleted. Only for a folder this process
    holds the lock of: a live writer's temporary file looks the same."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if is_temporary(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def check_writable_location(path: str | os.PathLike, what: str) -> Path:
    """Check, without creating anything, that ``path`` (a file or folder to be written, maybe with
    missing parent folders) can be created: no part of it is a file, and the nearest existing
    folder is writable. Returns the absolute path; raises OSError naming ``what`` and the path."""
    path = Path(path).expanduser().absolute()
    if path == Path(path.anchor):
        raise OSError(errno.EISDIR, f"{what} cannot be the file system's root", str(path))
    existing = path.parent
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: creating below it fails
            raise OSError(errno.ENOENT, f"{what} lies below a broken symbolic link", str(existing))
        existing = existing.parent
    if not existing.is_dir():
        raise OSError(errno.ENOTDIR, f"{what} lies below a file, not a folder", str(existing))
    if _read_only(existing):
        raise OSError(errno.EROFS, f"{what} cannot be created: read-only file system", str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"{what} cannot be created: no write permission", str(existing))
    return path


def _read_only(folder: Path) -> bool:
    """Whether ``folder`` is on a file system mounted read-only (os.access does not say so for root)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def relative_path(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` as results files record it: relative to ``base`` (POSIX separators; ``.`` for
    ``base`` itself) when it lies inside ``base``, so that the folder can be moved or shared;
    else absolute (a place outside, such as a data file or a model cache)."""
    path, base = Path(path).expanduser().absolute(), Path(base).expanduser().absolute()
    try:
        return path.relative_to(base).as_posix() or "."
    except ValueError:
        return str(path)


def relative_paths(value: object, base: str | os.PathLike) -> object:
    """``value`` (JSON-like: dicts, lists, text) with every text that is an absolute path inside
    ``base`` made relative to it (:func:`relative_path`); everything else as it is."""
    if isinstance(value, dict):
        return {key: relative_paths(item, base) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [relative_paths(item, base) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        inside = relative_path(value, base)
        return inside if not os.path.isabs(inside) else value
    return value


def describe_os_error(error: OSError) -> str:
    """One line for a file-system error: what failed, where, and the system's reason."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename is None:
        return reason
    other = f" -> {str(error.filename2)!r}" if error.filename2 is not None else ""
    return f"{reason}: {str(error.filename)!r}{other}"


__all__ = ["check_writable_location", "describe_os_error", "fsync_folder", "is_temporary", "relative_path",
           "relative_paths", "remove_orphans", "temporary_name", "write_atomic", "write_text_atomic"]

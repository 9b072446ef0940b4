"""Experiment files shipped with the package (``coun-fast run NAME``; ``coun-fast run --list``).

Each ``NAME.yaml`` here is an experiment in the format of :mod:`coun_fast.experiment.config`;
its ``description`` is the line listings show.
"""

from __future__ import annotations

from pathlib import Path

import yaml

DIRECTORY = Path(__file__).resolve().parent


def available() -> dict[str, str]:
    """``{name: description}`` of the shipped experiment files, sorted by name."""
    out = {}
    for path in sorted(DIRECTORY.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        out[path.stem] = str(raw.get("description", "")).strip() if isinstance(raw, dict) else ""
    return out


def resolve(name_or_path: str | Path) -> Path:
    """The file of a shipped experiment name (``cpu_small``), or ``name_or_path`` when it is a file.

    Raises FileNotFoundError naming the shipped experiments when it is neither.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = DIRECTORY / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no experiment file {str(name_or_path)!r} and no shipped experiment of that name; "
                            f"shipped: {', '.join(available())}")


__all__ = ["DIRECTORY", "available", "resolve"]

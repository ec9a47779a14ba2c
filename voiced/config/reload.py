"""What a SIGHUP applies: the settings' diff, the reload split, the live key set."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from voiced.config.settings import (
    Settings,
)


def diff(old: object, new: object, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two settings trees."""
    if _same_section(old, new):
        out: list[str] = []
        for f in dataclasses.fields(old):  # type: ignore[arg-type]
            if f.name in ("source_path", "warnings") or f.metadata.get("shadow"):
                continue
            key = f"{prefix}.{f.name}" if prefix else f.name
            out += diff(getattr(old, f.name), getattr(new, f.name), key)
        return out
    return [] if old == new else [prefix]


def _same_section(old: object, new: object) -> bool:
    return (dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new)
            and type(old) is type(new))


@dataclass(frozen=True, slots=True)
class Reload:
    """What a SIGHUP does with a new configuration (:func:`reload_split`)."""

    settings: Settings
    """The settings in force after the reload: the live keys' new values, the running
    values of everything else."""
    live: list[str]
    """Changed keys that apply now."""
    restart: list[str]
    """Changed keys that keep their running value until a restart."""


def reload_split(running: Settings, new: Settings) -> Reload:
    """Split a reload into what applies now (fields marked :data:`LIVE`) and the rest."""
    live: list[str] = []
    restart: list[str] = []

    def merge(old: Any, fresh: Any, prefix: str) -> Any:
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(old):
            key = f"{prefix}.{f.name}" if prefix else f.name
            was, now = getattr(old, f.name), getattr(fresh, f.name)
            if f.name in ("source_path", "warnings"):  # facts of the new file
                changes[f.name] = now
            elif f.metadata.get("shadow"):  # goes with the key it shadows (a restart)
                continue
            elif f.metadata.get("live"):
                if was != now:
                    live.append(key)
                    changes[f.name] = now
            elif _same_section(was, now):
                merged = merge(was, now, key)
                if merged is not was:
                    changes[f.name] = merged
            else:
                restart.extend(diff(was, now, key))
        return dataclasses.replace(old, **changes) if changes else old

    return Reload(merge(running, new, ""), live, restart)


def live_keys(section: type[Any] | None = None, prefix: str = "") -> list[str]:
    """The dotted keys a SIGHUP applies without a restart, from the LIVE marks."""
    out: list[str] = []
    cls = Settings if section is None else section
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.metadata.get("live"):
            out.append(key)
            continue
        for sub in typing.get_args(hints[f.name]) or (hints[f.name],):
            if dataclasses.is_dataclass(sub) and isinstance(sub, type):
                out += live_keys(sub, key)
    return out

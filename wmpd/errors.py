"""The one exception family of wmpd.

Only the CLI turns these into exit codes and human sentences; every message here
already says what was wrong and what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass


class WmpdError(Exception):
    """Base class for every error wmpd raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found in a config file, with where it is."""

    key_path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        key = f"{self.key_path}: " if self.key_path else ""
        return f"{where}{key}{self.message}"


class ConfigError(WmpdError):
    """The config file is unreadable or invalid; carries every problem at once."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {source}:{p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in config {source}:\n{lines}")


class CatalogError(WmpdError):
    """The SQLite catalog cannot be opened or used."""


class SchemaTooNewError(CatalogError):
    """The catalog was written by a newer wmpd."""


class IndexLockedError(WmpdError):
    """Another wmpd process (a daemon or an indexer) holds the data directory."""


class ModelLoadError(WmpdError):
    """The open_clip model or its weights could not be loaded."""


class ImageError(WmpdError):
    """One file could not be turned into an image; the reason is a short stable code."""

    def __init__(self, path: str, reason: str, detail: str) -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}: {detail}")


class DiskFullError(WmpdError):
    """The data directory has no space left; indexing pauses until it has."""


class ServiceError(WmpdError):
    """Installing or controlling the systemd/launchd service failed."""


class QueryError(WmpdError):
    """A search request is malformed; names the parameter at fault."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {message}")

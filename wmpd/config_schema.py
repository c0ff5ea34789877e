"""The config schema: frozen dataclasses with their defaults, and how each key is read.

`wmpd.config` walks the YAML nodes and calls the readers named in the field tables below;
every reader records a problem (with the key path and line) instead of raising, so a whole
file is checked in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from wmpd.errors import ConfigProblem
from wmpd.paths import default_data_dir
from wmpd.units import expand_path, parse_duration, parse_size

MIB = 1024 * 1024
DEFAULT_EXTENSIONS = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "gif",
    "bmp",
    "tif",
    "tiff",
    "heic",
    "heif",
    "avif",
)
DEFAULT_EXCLUDE = (".*", "@eaDir", "#recycle", "$RECYCLE.BIN", "lost+found")
PRECISIONS = ("fp32", "bf16", "int8")
DEVICES = ("cpu", "cuda", "mps")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
NULL_TAG = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class FolderConfig:
    path: Path
    recursive: bool = True
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    name: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    precision: str = "fp32"
    threads: int = 0
    batch_size: int = 32
    device: str = "cpu"


@dataclass(frozen=True)
class IndexConfig:
    data_dir: Path = field(default_factory=default_data_dir)


@dataclass(frozen=True)
class ServerConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8756
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_upload_bytes: int = 25 * MIB


@dataclass(frozen=True)
class WatcherConfig:
    settle_seconds: float = 2.0
    rescan_interval: float = 3600.0
    polling: bool = False
    poll_interval: float = 10.0


@dataclass(frozen=True)
class LimitsConfig:
    max_image_pixels: int = 200_000_000
    max_file_bytes: int = 256 * MIB


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    folders: tuple[FolderConfig, ...]
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    model: ModelConfig = field(default_factory=ModelConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    watcher: WatcherConfig = field(default_factory=WatcherConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Where a config came from is not part of what it says: two files with the same
    # settings compare equal, which is what a reload wants to know.
    source: Path | None = field(default=None, compare=False)


class Invalid:
    """What a reader returns after it has recorded a problem; the key keeps its default."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID = Invalid()


@dataclass(frozen=True)
class _Shape:
    """Stands in for a list or mapping where a scalar was expected, for the message."""

    description: str


def describe(found: object) -> str:
    """How a found value is named in a message: "the string 'abc'", "a list"."""
    if isinstance(found, _Shape):
        return found.description
    if found is None:
        return "null (an empty value)"
    if isinstance(found, bool):
        return f"the boolean {str(found).lower()}"
    if isinstance(found, int):
        return f"the integer {found}"
    if isinstance(found, float):
        return f"the number {found}"
    if isinstance(found, str):
        shown = found if len(found) <= 60 else found[:57] + "..."
        return f"the string {shown!r}"
    return f"a {type(found).__name__} ({found})"


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and node.tag == NULL_TAG)


class Checker:
    """Reads typed values out of YAML nodes, collecting every problem on the way."""

    def __init__(self, base_dir: Path, env: Mapping[str, str]) -> None:
        self.base_dir = base_dir
        self.env = env
        self.problems: list[ConfigProblem] = []
        self.lines: dict[str, int] = {}
        # Only used for its constructor: it gives scalars exactly yaml.safe_load's meaning.
        self._loader = yaml.SafeLoader("")

    def report(self, key: str, message: str, where: Node | int | None) -> Invalid:
        line = line_of(where) if isinstance(where, Node) else where
        self.problems.append(ConfigProblem(key, message, line))
        return INVALID

    def flatten(self, node: MappingNode, key: str) -> None:
        """Apply YAML merge keys (`<<: *defaults`) as yaml.safe_load would."""
        try:
            self._loader.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self.report(key, f"cannot merge keys: {getattr(exc, 'problem', exc)}", node)

    def value(self, node: Node, key: str) -> object:
        if isinstance(node, SequenceNode):
            return _Shape("a list")
        if isinstance(node, MappingNode):
            return _Shape("a mapping")
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            return self.report(key, f"cannot read this value: {getattr(exc, 'problem', exc)}", node)

    def wrong_type(self, key: str, node: Node, expected: str, found: object) -> Invalid:
        if isinstance(found, Invalid):
            return found
        hint = ""
        if expected.startswith("a string") and isinstance(found, (bool, int, float)):
            hint = " (put it in quotes if you meant it as text)"
        return self.report(key, f"expected {expected}, got {describe(found)}{hint}", node)

    def boolean(self, node: Node, key: str) -> Any:
        found = self.value(node, key)
        if isinstance(found, bool):
            return found
        return self.wrong_type(key, node, "true or false", found)

    def integer(self, node: Node, key: str, low: int | None = None, high: int | None = None) -> Any:
        found = self.value(node, key)
        if isinstance(found, bool) or not isinstance(found, int):
            return self.wrong_type(key, node, "an integer", found)
        return self.in_range(node, key, found, low, high)

    def duration(self, node: Node, key: str, low: float = 0.0, *, above: bool = False) -> Any:
        found = self.value(node, key)
        if isinstance(found, str):
            try:
                found = parse_duration(found)
            except ValueError as exc:
                return self.report(key, str(exc), node)
        if isinstance(found, bool) or not isinstance(found, (int, float)):
            expected = "a duration (seconds, or a string like '90s', '15m', '1h', '1d')"
            return self.wrong_type(key, node, expected, found)
        if not math.isfinite(found):
            return self.report(key, f"must be a finite number of seconds, got {found}", node)
        if above and found <= low:
            return self.report(key, f"must be greater than {low:g} seconds, got {found:g}", node)
        return self.in_range(node, key, float(found), low, None)

    def size(self, node: Node, key: str, low: int = 1) -> Any:
        found = self.value(node, key)
        if isinstance(found, str):
            try:
                found = parse_size(found)
            except ValueError as exc:
                return self.report(key, str(exc), node)
        if isinstance(found, bool) or not isinstance(found, int):
            expected = "a size (bytes, or a string like '25 MiB', '200MB', '1.5 GB')"
            return self.wrong_type(key, node, expected, found)
        return self.in_range(node, key, found, low, None)

    def in_range(
        self, node: Node, key: str, found: Any, low: float | None, high: float | None
    ) -> Any:
        if low is not None and high is not None and not low <= found <= high:
            return self.report(key, f"must be between {low} and {high}, got {found}", node)
        if low is not None and found < low:
            return self.report(key, f"must be at least {low}, got {found}", node)
        if high is not None and found > high:
            return self.report(key, f"must be at most {high}, got {found}", node)
        return found

    def text(self, node: Node, key: str, *, nullable: bool = False) -> Any:
        found = self.value(node, key)
        if found is None and nullable:
            return None
        if not isinstance(found, str):
            expected = "a string or null" if nullable else "a string"
            return self.wrong_type(key, node, expected, found)
        if not found.strip():
            hint = " (write null to leave it unset)" if nullable else ""
            return self.report(key, f"must not be empty{hint}", node)
        return found

    def choice(self, node: Node, key: str, choices: tuple[str, ...]) -> Any:
        found = self.text(node, key)
        if isinstance(found, Invalid):
            return found
        for allowed in choices:
            if found.strip().casefold() == allowed.casefold():
                return allowed
        return self.report(key, f"must be one of {', '.join(choices)}; got {found!r}", node)

    def text_list(self, node: Node, key: str) -> Any:
        if is_null(node):
            return ()
        if not isinstance(node, SequenceNode):
            return self.wrong_type(key, node, "a list of strings", self.value(node, key))
        items = [self.text(item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        if any(isinstance(item, Invalid) for item in items):
            return INVALID
        return tuple(items)

    def path(self, node: Node, key: str) -> Any:
        raw = self.text(node, key)
        if isinstance(raw, Invalid):
            return raw
        try:
            return expand_path(raw, self.base_dir, self.env)
        except ValueError as exc:
            return self.report(key, str(exc), node)

    def existing_file(self, node: Node, key: str, what: str) -> Any:
        path = self.path(node, key)
        if isinstance(path, Invalid):
            return path
        if not path.is_file():
            state = "is not a file" if path.exists() else "does not exist"
            return self.report(key, f"the {what} {path} {state}", node)
        return str(path)


def looks_like_model_config(name: str) -> bool:
    """A model name that is a path to an open_clip model config .json, not a built-in name.

    Only the suffix decides (as in the embedder): "hf-hub:org/model" has a slash and is a
    hub name, not a path.
    """
    return name.endswith(".json")


def looks_like_checkpoint(pretrained: str) -> bool:
    """A pretrained value that is a local checkpoint file, not a hub tag."""
    return pretrained.lower().endswith(CHECKPOINT_SUFFIXES) or _has_separator(pretrained)


def _has_separator(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith("~")


def read_model_name(checker: Checker, node: Node, key: str) -> Any:
    name = checker.text(node, key)
    if isinstance(name, str) and looks_like_model_config(name):
        return checker.existing_file(node, key, "model config")
    return name


def read_pretrained(checker: Checker, node: Node, key: str) -> Any:
    tag = checker.text(node, key, nullable=True)
    if isinstance(tag, str) and looks_like_checkpoint(tag):
        return checker.existing_file(node, key, "checkpoint")
    return tag


def read_directory(checker: Checker, node: Node, key: str) -> Any:
    # A missing folder is fine (an unmounted disk is normal); a file where a folder
    # should be is a mistake.
    path = checker.path(node, key)
    if isinstance(path, Path) and path.exists() and not path.is_dir():
        return checker.report(key, f"{path} exists but is not a directory", node)
    return path


def read_data_dir(checker: Checker, node: Node, key: str) -> Any:
    if is_null(node):
        return default_data_dir()
    return read_directory(checker, node, key)


def read_extensions(checker: Checker, node: Node, key: str) -> Any:
    items = checker.text_list(node, key)
    if isinstance(items, Invalid):
        return items
    normalised: list[str] = []
    for i, item in enumerate(items):
        extension = item.strip().lstrip(".").lower()
        if not extension or any(c in extension for c in "/\\*?[]. "):
            where = node.value[i] if isinstance(node, SequenceNode) else node
            checker.report(f"{key}[{i}]", f"{item!r} is not a file extension like 'jpg'", where)
            return INVALID
        normalised.append(extension)
    if not normalised:
        return checker.report(key, "must list at least one extension, like [jpg, png]", node)
    return tuple(dict.fromkeys(normalised))


Reader = Callable[[Checker, Node, str], Any]

FOLDER_FIELDS: dict[str, Reader] = {
    "path": read_directory,
    "recursive": Checker.boolean,
    "exclude": Checker.text_list,
}
TOP_FIELDS: dict[str, Reader] = {
    "extensions": read_extensions,
    "exclude": Checker.text_list,
}
SECTIONS: dict[str, tuple[type[Any], dict[str, Reader]]] = {
    "model": (
        ModelConfig,
        {
            "name": read_model_name,
            "pretrained": read_pretrained,
            "precision": partial(Checker.choice, choices=PRECISIONS),
            "threads": partial(Checker.integer, low=0),
            "batch_size": partial(Checker.integer, low=1, high=1024),
            "device": partial(Checker.choice, choices=DEVICES),
        },
    ),
    "index": (IndexConfig, {"data_dir": read_data_dir}),
    "server": (
        ServerConfig,
        {
            "enabled": Checker.boolean,
            "host": Checker.text,
            "port": partial(Checker.integer, low=1, high=65535),
            "token": partial(Checker.text, nullable=True),
            "allowed_hosts": Checker.text_list,
            "max_upload_bytes": Checker.size,
        },
    ),
    "watcher": (
        WatcherConfig,
        {
            "settle_seconds": Checker.duration,
            "rescan_interval": Checker.duration,
            "polling": Checker.boolean,
            "poll_interval": partial(Checker.duration, above=True),
        },
    ),
    "limits": (
        LimitsConfig,
        {"max_image_pixels": partial(Checker.integer, low=1), "max_file_bytes": Checker.size},
    ),
    "logging": (LoggingConfig, {"level": partial(Checker.choice, choices=LOG_LEVELS)}),
}

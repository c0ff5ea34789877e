"""YAML config file → frozen dataclasses, with every problem reported at once.

The file is composed into YAML nodes (not loaded straight into dicts) so that each problem
can name the line it is on; scalars still get exactly yaml.safe_load's meaning.

Environment:
    WMPD_DATA_DIR   when set (and not empty), overrides `index.data_dir`.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import ipaddress
import itertools
import logging
import os
import tempfile
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from wmpd.config_schema import (
    FOLDER_FIELDS,
    SECTIONS,
    TOP_FIELDS,
    Checker,
    Config,
    FolderConfig,
    IndexConfig,
    Invalid,
    LimitsConfig,
    LoggingConfig,
    ModelConfig,
    Reader,
    ServerConfig,
    WatcherConfig,
    is_null,
    line_of,
    looks_like_checkpoint,
    looks_like_model_config,
    read_directory,
)
from wmpd.errors import ConfigError, ConfigProblem, WmpdError
from wmpd.units import escape_path, expand_path

__all__ = [
    "DATA_DIR_ENV_VAR",
    "Config",
    "FolderConfig",
    "IndexConfig",
    "LimitsConfig",
    "LoggingConfig",
    "ModelConfig",
    "ServerConfig",
    "WatcherConfig",
    "config_keys",
    "dump_config",
    "load_config",
    "parse_config",
    "starter_config_text",
    "write_starter_config",
]

logger = logging.getLogger(__name__)

DATA_DIR_ENV_VAR = "WMPD_DATA_DIR"
_INIT_HINT = "run `wmpd config init` to create one"
_STARTER_RESOURCE = ("resources", "config.example.yaml")


def load_config(path: Path) -> Config:
    """Read and validate the config file at path; raises ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = ConfigProblem("", f"{path} does not exist; {_INIT_HINT}")
        raise ConfigError(str(path), [problem]) from None
    except (OSError, UnicodeDecodeError) as exc:
        problem = ConfigProblem("", f"cannot read {path}: {exc}")
        raise ConfigError(str(path), [problem]) from exc
    base_dir = Path(os.path.abspath(path)).parent
    config = parse_config(text, str(path), base_dir)
    logger.debug("loaded config from %s", path)
    return dataclasses.replace(config, source=Path(os.path.abspath(path)))


def parse_config(text: str, source: str, base_dir: Path) -> Config:
    """Validate config text; relative paths are taken from base_dir, `source` names it."""
    root = _compose(text, source)
    checker = Checker(Path(os.path.abspath(base_dir)), os.environ)
    config = _read_config(checker, root)
    if checker.problems:
        # Sorted by line so the list reads like the file; problems without one go last.
        problems = sorted(checker.problems, key=lambda p: p.line or 1 << 30)
        raise ConfigError(source, problems)
    return config


def _compose(text: str, source: str) -> MappingNode:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = ConfigProblem("", f"invalid YAML: {exc.problem or exc.context}", line)
        raise ConfigError(source, [problem]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, [ConfigProblem("", f"invalid YAML: {exc}")]) from exc
    if root is None or is_null(root):
        message = (
            "the file is empty; it needs at least a `folders:` list "
            "(`wmpd config init` writes a commented example)"
        )
        raise ConfigError(source, [ConfigProblem("", message, 1)])
    if not isinstance(root, MappingNode):
        shape = "a list" if isinstance(root, SequenceNode) else "a single value"
        message = f"the top level must be a mapping of keys like `folders:`, got {shape}"
        raise ConfigError(source, [ConfigProblem("", message, line_of(root))])
    return root


def _read_config(checker: Checker, root: MappingNode) -> Config:
    known = ["folders", *TOP_FIELDS, *SECTIONS]
    items = _mapping_items(checker, root, "", known)
    folders = _read_folders(checker, items.get("folders"), line_of(root))
    values: dict[str, Any] = {}
    for key, reader in TOP_FIELDS.items():
        if key in items:
            values[key] = reader(checker, items[key], key)
    for name, (section_class, table) in SECTIONS.items():
        section = items.get(name)
        values[name] = section_class(**_read_fields(checker, section, name, table))
    values = {key: value for key, value in values.items() if not isinstance(value, Invalid)}
    config = Config(folders=folders, **values)
    config = _apply_data_dir_override(checker, config)
    _check_server_token(checker, config.server)
    return config


def _mapping_items(
    checker: Checker, node: Node | None, key_path: str, known: list[str]
) -> dict[str, Node]:
    """The known keys of a mapping node and their value nodes; anything else is a problem."""
    if node is None or is_null(node):
        return {}
    if not isinstance(node, MappingNode):
        checker.wrong_type(key_path, node, "a mapping of keys", checker.value(node, key_path))
        return {}
    _report_duplicates(checker, node, key_path)
    checker.flatten(node, key_path)
    items: dict[str, Node] = {}
    # Later pairs win, so a key written out overrides one merged in with `<<:`.
    for key_node, value_node in node.value:
        key = checker.value(key_node, key_path)
        full_key = _join(key_path, str(key))
        if isinstance(key, Invalid):
            continue
        if not isinstance(key, str):
            checker.report(full_key, f"keys must be text, got {key!r}", key_node)
        elif key not in known:
            checker.report(full_key, _unknown_key_message(key, key_path, known), key_node)
        else:
            items[key] = value_node
            checker.lines[full_key] = line_of(value_node)
    return items


def _report_duplicates(checker: Checker, node: MappingNode, key_path: str) -> None:
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        key = getattr(key_node, "value", None)
        if key == "<<" or not isinstance(key, str):
            continue
        if key in seen:
            message = f"is set twice (first on line {seen[key]}); keep one"
            checker.report(_join(key_path, key), message, key_node)
        else:
            seen[key] = line_of(key_node)


def _unknown_key_message(key: str, key_path: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    # A key put in the wrong section (`port:` under `model:`) is worth pointing home.
    homes = [full for full in config_keys() if full.rsplit(".", 1)[-1] == key]
    homes = [full for full in homes if not full.startswith(f"{key_path}.")]
    if homes:
        return f"unknown key {key!r} here; did you mean {homes[0]!r}?"
    return f"unknown key {key!r}; the keys allowed here are: {', '.join(known)}"


def _read_fields(
    checker: Checker,
    node: Node | None,
    key_path: str,
    table: dict[str, Reader],
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Read a mapping against a field table; keys with problems keep their default."""
    items = _mapping_items(checker, node, key_path, list(table))
    for key in required:
        if key not in items and isinstance(node, MappingNode):
            checker.report(_join(key_path, key), "is required", node)
    values = {key: table[key](checker, value, _join(key_path, key)) for key, value in items.items()}
    return {key: value for key, value in values.items() if not isinstance(value, Invalid)}


def _read_folders(checker: Checker, node: Node | None, root_line: int) -> tuple[FolderConfig, ...]:
    if node is None:
        message = "is required: list at least one folder to index, like `folders: [~/Pictures]`"
        checker.report("folders", message, root_line)
        return ()
    if not isinstance(node, SequenceNode):
        found = checker.value(node, "folders")
        checker.wrong_type("folders", node, "a list of folders", found)
        return ()
    if not node.value:
        checker.report("folders", "is empty: list at least one folder to index", node)
    found_folders: list[tuple[FolderConfig, str, Node]] = []
    for i, item in enumerate(node.value):
        key = f"folders[{i}]"
        folder = _read_folder(checker, item, key)
        if folder is not None:
            found_folders.append((folder, key, item))
    _check_overlaps(checker, found_folders)
    return tuple(folder for folder, _, _ in found_folders)


def _read_folder(checker: Checker, node: Node, key: str) -> FolderConfig | None:
    if isinstance(node, MappingNode):
        values = _read_fields(checker, node, key, FOLDER_FIELDS, required=("path",))
        return FolderConfig(**values) if "path" in values else None
    found = checker.value(node, key)
    if isinstance(found, str):
        path = read_directory(checker, node, key)
        return None if isinstance(path, Invalid) else FolderConfig(path=path)
    expected = "a folder path or a mapping with a `path:` key"
    checker.wrong_type(key, node, expected, found)
    return None


def _check_overlaps(checker: Checker, found: list[tuple[FolderConfig, str, Node]]) -> None:
    """Two folders may not cover the same files: the same image would have two roots."""
    pairs = itertools.combinations(found, 2)
    for (first, first_key, first_node), (second, second_key, second_node) in pairs:
        if first.path == second.path:
            message = f"{second.path} is listed twice (also as {first_key})"
            checker.report(second_key, message, second_node)
            continue
        for outer, outer_key, inner, inner_key, node in (
            (first, first_key, second, second_key, second_node),
            (second, second_key, first, first_key, first_node),
        ):
            # Below a non-recursive folder only its own files are watched, so a folder
            # nested inside it overlaps nothing.
            if outer.recursive and inner.path.is_relative_to(outer.path):
                message = (
                    f"{inner.path} is inside {outer_key} ({outer.path}), which already "
                    "covers it; list only the outer folder (use `exclude` to leave parts out)"
                )
                checker.report(inner_key, message, node)


def _apply_data_dir_override(checker: Checker, config: Config) -> Config:
    raw = os.environ.get(DATA_DIR_ENV_VAR)
    if not raw:
        return config
    key = f"index.data_dir (from ${DATA_DIR_ENV_VAR})"
    try:
        data_dir = expand_path(raw, Path.cwd(), os.environ)
    except ValueError as exc:
        checker.report(key, str(exc), None)
        return config
    if data_dir.exists() and not data_dir.is_dir():
        checker.report(key, f"{data_dir} exists but is not a directory", None)
        return config
    return dataclasses.replace(config, index=IndexConfig(data_dir=data_dir))


def _check_server_token(checker: Checker, server: ServerConfig) -> None:
    if not server.enabled or server.token is not None or _is_loopback(server.host):
        return
    message = (
        f"is required when server.host ({server.host}) is not a loopback address; "
        "without it anyone who can reach the port could search and view your pictures"
    )
    checker.report("server.token", message, checker.lines.get("server.host"))


def _is_loopback(host: str) -> bool:
    bare = host.strip().strip("[]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def _join(key_path: str, key: str) -> str:
    return f"{key_path}.{key}" if key_path else key


def dump_config(config: Config) -> str:
    """YAML text that parse_config reads back into an equal Config (paths are absolute)."""
    data: dict[str, Any] = {
        "folders": [
            {
                "path": escape_path(str(folder.path)),
                "recursive": folder.recursive,
                "exclude": list(folder.exclude),
            }
            for folder in config.folders
        ],
        "extensions": list(config.extensions),
        "exclude": list(config.exclude),
    }
    for name in SECTIONS:
        section = getattr(config, name)
        data[name] = {f.name: _plain(getattr(section, f.name)) for f in fields(section)}
    model = data["model"]
    if looks_like_model_config(config.model.name):
        model["name"] = escape_path(config.model.name)
    if config.model.pretrained is not None and looks_like_checkpoint(config.model.pretrained):
        model["pretrained"] = escape_path(config.model.pretrained)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1 << 16)


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return escape_path(str(value))
    if isinstance(value, tuple):
        return list(value)
    return value


def config_keys() -> list[str]:
    """Every key of the schema, dotted: "model.batch_size", "folders[].path", "extensions"."""
    keys: list[str] = []
    for top in fields(Config):
        if top.name == "folders":
            keys += [f"folders[].{f.name}" for f in fields(FolderConfig)]
        elif top.name in SECTIONS:
            keys += [f"{top.name}.{f.name}" for f in fields(SECTIONS[top.name][0])]
        elif top.name != "source":
            keys.append(top.name)
    return keys


def starter_config_text() -> str:
    """The commented example config shipped with the package."""
    resource = resources.files("wmpd")
    for part in _STARTER_RESOURCE:
        resource = resource / part
    return resource.read_text(encoding="utf-8")


def write_starter_config(path: Path, *, force: bool = False) -> Path:
    """Write the example config to path (creating folders); never overwrites unless force."""
    if path.exists() and not force:
        raise WmpdError(
            f"{path} already exists; not overwriting it "
            "(edit it, or use `wmpd config init --force` to replace it with the example)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, starter_config_text())
    except OSError as exc:
        raise WmpdError(f"cannot write the starter config to {path}: {exc}") from exc
    logger.info("wrote starter config to %s", path)
    return path


def _write_atomically(path: Path, text: str) -> None:
    # Written beside the target and renamed, so a crash never leaves half a file. mkstemp
    # makes it private (0600), which suits a file that may later hold the server token.
    fd, temp_name = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def keep_data_dir_out(config: Config) -> Config:
    """Never index wmpd's own files when index.data_dir lies inside a watched folder.

    Its thumbnails are JPEGs: indexed, they would show up in searches and be thumbnailed
    in turn. The data directory is added to that folder's excludes.
    """
    data_dir = config.index.data_dir
    folders = []
    for folder in config.folders:
        if data_dir != folder.path and data_dir.is_relative_to(folder.path):
            relative = glob.escape(data_dir.relative_to(folder.path).as_posix())
            # A pattern with a "/" is matched against the whole relative path: "data/"
            # excludes everything below that one directory, not every "data" folder.
            folder = dataclasses.replace(folder, exclude=(*folder.exclude, f"{relative}/"))
        folders.append(folder)
    return dataclasses.replace(config, folders=tuple(folders))

"""The configuration layer: YAML → frozen dataclasses, every problem with its key and line."""

from __future__ import annotations

import dataclasses
import string
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml.nodes import MappingNode, Node, SequenceNode

from wmpd.config import (
    Config,
    FolderConfig,
    IndexConfig,
    LimitsConfig,
    LoggingConfig,
    ModelConfig,
    ServerConfig,
    WatcherConfig,
    config_keys,
    dump_config,
    load_config,
    parse_config,
    starter_config_text,
    write_starter_config,
)
from wmpd.config_schema import FOLDER_FIELDS, SECTIONS
from wmpd.errors import ConfigError, ConfigProblem, WmpdError
from wmpd.paths import default_config_path, default_data_dir, resolve_config_path
from wmpd.units import parse_duration, parse_size

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
PACKAGED_EXAMPLE = REPO / "wmpd" / "resources" / "config.example.yaml"
TINY_MODEL_JSON = REPO / "tests" / "models" / "tiny-clip.json"


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake HOME and no wmpd/XDG variables, so nothing reads or writes the real home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WMPD_DATA_DIR", "WMPD_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


def parse(text: str, base_dir: Path) -> Config:
    return parse_config(textwrap.dedent(text), "test.yaml", base_dir)


def problems_of(text: str, base_dir: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        parse(text, base_dir)
    assert caught.value.source == "test.yaml"
    return caught.value.problems


def only_problem(text: str, base_dir: Path) -> ConfigProblem:
    problems = problems_of(text, base_dir)
    assert len(problems) == 1, problems
    return problems[0]


# --- defaults and basic reading -------------------------------------------------------------


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    config = parse("folders: [pics]", tmp_path)
    assert config.folders == (FolderConfig(path=tmp_path / "pics"),)
    assert config == Config(folders=(FolderConfig(tmp_path / "pics"),))
    assert config.extensions == (
        "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif", "avif"
    )  # fmt: skip
    assert config.exclude == (".*", "@eaDir", "#recycle", "$RECYCLE.BIN", "lost+found")
    assert config.model == ModelConfig("ViT-B-32", "laion2b_s34b_b79k", "fp32", 0, 32, "cpu")
    assert config.server == ServerConfig(True, "127.0.0.1", 8756, None, (), 25 * 1024 * 1024)
    assert config.watcher == WatcherConfig(2.0, 3600.0, False, 10.0)
    assert config.limits == LimitsConfig(200_000_000, 256 * 1024 * 1024)
    assert config.logging == LoggingConfig("INFO")
    assert config.index == IndexConfig(tmp_path / "home" / ".local" / "share" / "wmpd")
    assert config.source is None


def test_config_is_frozen(tmp_path: Path) -> None:
    config = parse("folders: [pics]", tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.batch_size = 3  # type: ignore[misc]


def test_load_config_resolves_relative_paths_against_the_file(tmp_path: Path) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "wmpd.yaml").write_text("folders: [../photos, ./more/]\n", encoding="utf-8")
    config = load_config(config_dir / "wmpd.yaml")
    assert [f.path for f in config.folders] == [tmp_path / "photos", config_dir / "more"]
    assert config.source == config_dir / "wmpd.yaml"


def test_folder_written_as_mapping(tmp_path: Path) -> None:
    config = parse(
        """
        folders:
          - path: /srv/photos
            recursive: false
            exclude: ["*.tmp", Trash]
          - /srv/other
        """,
        tmp_path,
    )
    assert config.folders == (
        FolderConfig(Path("/srv/photos"), False, ("*.tmp", "Trash")),
        FolderConfig(Path("/srv/other")),
    )


def test_every_section_is_read(tmp_path: Path) -> None:
    config = parse(
        """
        folders: [/p]
        extensions: [".JPG", Png, jpg]
        exclude: ["tmp*"]
        model: {name: RN50, pretrained: openai, precision: BF16, threads: 4, batch_size: 8,
                device: cuda}
        index: {data_dir: data}
        server: {enabled: false, host: "::1", port: 9000, token: s3cret,
                 allowed_hosts: [pc.lan], max_upload_bytes: 1 MB}
        watcher: {settle_seconds: 0.5, rescan_interval: 0, polling: yes, poll_interval: 1m}
        limits: {max_image_pixels: 1_000, max_file_bytes: "1.5 KiB"}
        logging: {level: debug}
        """,
        tmp_path,
    )
    assert config.extensions == ("jpg", "png")
    assert config.exclude == ("tmp*",)
    assert config.model == ModelConfig("RN50", "openai", "bf16", 4, 8, "cuda")
    assert config.index.data_dir == tmp_path / "data"
    assert config.server == ServerConfig(False, "::1", 9000, "s3cret", ("pc.lan",), 1_000_000)
    assert config.watcher == WatcherConfig(0.5, 0.0, True, 60.0)
    assert config.limits == LimitsConfig(1000, 1536)
    assert config.logging.level == "DEBUG"


def test_empty_section_means_defaults(tmp_path: Path) -> None:
    config = parse("folders: [/p]\nmodel:\nserver: {}\n", tmp_path)
    assert config.model == ModelConfig()
    assert config.server == ServerConfig()


def test_merge_keys_work_like_safe_load(tmp_path: Path) -> None:
    config = parse(
        """
        folders: [/p]
        model:
          <<: {batch_size: 8, threads: 2}
          threads: 3
        """,
        tmp_path,
    )
    assert (config.model.batch_size, config.model.threads) == (8, 3)


# --- file-level problems --------------------------------------------------------------------


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert str(path) in str(caught.value)
    assert "run `wmpd config init` to create one" in str(caught.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    problem = only_problem(text, tmp_path)
    assert "empty" in problem.message
    assert problem.line == 1


@pytest.mark.parametrize(
    ("text", "shape"), [("- a\n- b\n", "a list"), ("just text\n", "a single value")]
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, shape: str) -> None:
    problem = only_problem(text, tmp_path)
    assert "top level must be a mapping" in problem.message
    assert shape in problem.message


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    problem = only_problem('folders: [/p]\nmodel:\n  name: "ViT\n  threads: [1\n', tmp_path)
    assert problem.message.startswith("invalid YAML")
    assert problem.line == 5


def test_bad_indentation_has_its_line(tmp_path: Path) -> None:
    problem = only_problem("folders: [/p]\nmodel:\n  name: x\n threads: 2\n", tmp_path)
    assert problem.message.startswith("invalid YAML")
    assert problem.line == 4


def test_error_message_names_source_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse("folders: [/p]\nmodel:\n  batch_size: x\n", tmp_path)
    assert "test.yaml:line 3: model.batch_size: expected an integer" in str(caught.value)


def test_unsafe_tag_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    problem = only_problem("folders: [/p]\nmodel:\n  name: !!python/name:os.system\n", tmp_path)
    assert problem.key_path == "model.name"
    assert problem.line == 3
    assert "cannot read this value" in problem.message


# --- unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line", "suggestion"),
    [
        ("folders: [/p]\nmodel:\n  batchsize: 3\n", "model.batchsize", 3, "'batch_size'"),
        ("folders: [/p]\nservr:\n  port: 1\n", "servr", 2, "'server'"),
        ("folder: [/p]\n", "folder", 1, "'folders'"),
        ("folders: [/p]\nport: 80\n", "port", 2, "'server.port'"),
        ("folders: [/p]\nmodel:\n  port: 80\n", "model.port", 3, "'server.port'"),
        ("folders:\n  - path: /p\n    recursve: no\n", "folders[0].recursve", 3, "'recursive'"),
        ("folders: [/p]\nlogging: {Level: INFO}\n", "logging.Level", 2, "'level'"),
    ],
)
def test_unknown_key_suggests_the_right_one(
    tmp_path: Path, text: str, key: str, line: int, suggestion: str
) -> None:
    problems = problems_of(text, tmp_path)
    problem = next(p for p in problems if p.key_path == key)
    assert problem.line == line
    assert f"did you mean {suggestion}?" in problem.message


def test_unknown_key_without_a_near_match_lists_the_allowed_ones(tmp_path: Path) -> None:
    problem = only_problem("folders: [/p]\nwatcher:\n  zzz: 1\n", tmp_path)
    assert problem.key_path == "watcher.zzz"
    assert "settle_seconds, rescan_interval, polling, poll_interval" in problem.message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    problem = only_problem("folders: [/p]\nmodel:\n  threads: 1\n  threads: 2\n", tmp_path)
    assert problem.key_path == "model.threads"
    assert problem.line == 4
    assert "set twice (first on line 3)" in problem.message


def test_non_text_key_is_an_error(tmp_path: Path) -> None:
    problem = only_problem("folders: [/p]\n1: x\n", tmp_path)
    assert problem.line == 2
    assert "keys must be text" in problem.message


# --- wrong types, enums and ranges ----------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        (
            "model:\n  batch_size: abc",
            "model.batch_size",
            "expected an integer, got the string 'abc'",
        ),
        (
            "model:\n  batch_size: 2.5",
            "model.batch_size",
            "expected an integer, got the number 2.5",
        ),
        ("model:\n  threads: true", "model.threads", "expected an integer, got the boolean true"),
        ("model:\n  name: [a]", "model.name", "expected a string, got a list"),
        ("server:\n  host: 5", "server.host", "got the integer 5 (put it in quotes"),
        (
            "server:\n  enabled: maybe",
            "server.enabled",
            "expected true or false, got the string 'maybe'",
        ),
        ("server:\n  port: 0", "server.port", "must be between 1 and 65535, got 0"),
        ("server:\n  port: 65536", "server.port", "must be between 1 and 65535, got 65536"),
        ("server:\n  token: ''", "server.token", "must not be empty (write null"),
        ("server:\n  allowed_hosts: pc.lan", "server.allowed_hosts", "expected a list of strings"),
        ("model:\n  batch_size: 0", "model.batch_size", "must be between 1 and 1024, got 0"),
        ("model:\n  batch_size: 1025", "model.batch_size", "must be between 1 and 1024"),
        ("model:\n  threads: -1", "model.threads", "must be at least 0, got -1"),
        (
            "model:\n  precision: fp16",
            "model.precision",
            "must be one of fp32, bf16, int8; got 'fp16'",
        ),
        ("model:\n  device: tpu", "model.device", "must be one of cpu, cuda, mps; got 'tpu'"),
        (
            "logging:\n  level: verbose",
            "logging.level",
            "must be one of DEBUG, INFO, WARNING, ERROR",
        ),
        ("limits:\n  max_image_pixels: 0", "limits.max_image_pixels", "must be at least 1, got 0"),
        ("watcher:\n  polling: null", "watcher.polling", "expected true or false, got null"),
        ("model: 5", "model", "expected a mapping of keys, got the integer 5"),
    ],
)
def test_wrong_value_names_expected_and_found(
    tmp_path: Path, section: str, key: str, message: str
) -> None:
    problem = only_problem(f"folders: [/p]\n{section}\n", tmp_path)
    assert problem.key_path == key
    assert message in problem.message
    assert problem.line == section.count("\n") + 2


def test_enum_values_are_case_insensitive(tmp_path: Path) -> None:
    config = parse(
        "folders: [/p]\nmodel: {precision: INT8, device: CPU}\nlogging: {level: warning}", tmp_path
    )
    assert (config.model.precision, config.model.device) == ("int8", "cpu")
    assert config.logging.level == "WARNING"


def test_list_item_problem_has_the_item_key_and_line(tmp_path: Path) -> None:
    problem = only_problem("folders: [/p]\nexclude:\n  - ok\n  - 3\n", tmp_path)
    assert problem.key_path == "exclude[1]"
    assert problem.line == 4


@pytest.mark.parametrize("bad", ["'*.jpg'", "''", "a/b"])
def test_bad_extension(tmp_path: Path, bad: str) -> None:
    problem = only_problem(f"folders: [/p]\nextensions:\n  - jpg\n  - {bad}\n", tmp_path)
    assert problem.key_path == "extensions[1]"
    assert problem.line == 4


def test_extensions_may_not_be_empty(tmp_path: Path) -> None:
    problem = only_problem("folders: [/p]\nextensions: []\n", tmp_path)
    assert problem.key_path == "extensions"
    assert "at least one extension" in problem.message


# --- sizes and durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        ("25 MiB", 25 * 2**20),
        ("200MB", 200_000_000),
        ("1.5 GB", 1_500_000_000),
        ("1.5 gib", 3 * 2**29),
        ("2 KiB", 2048),
        ("10 kb", 10_000),
        ("1 TB", 10**12),
        ("7 bytes", 7),
        (" 3B ", 3),
        (".5 KiB", 512),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lots", "is not a size"),
        ("5 XB", "unknown size unit 'XB'"),
        ("1.5 B", "not a whole number of bytes"),
        ("-1 MB", "is not a size"),
        ("", "is not a size"),
    ],
)
def test_parse_size_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("2.5", 2.5),
        ("1.5 min", 90.0),
        ("2 hours", 7200.0),
    ],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("soon", "is not a duration"),
        ("5 weeks", "unknown duration unit 'weeks'"),
        ("1 2", "without a unit"),
        ("-5s", "is not a duration"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ("server: {max_upload_bytes: lots}", "server.max_upload_bytes", "'lots' is not a size"),
        ("server: {max_upload_bytes: 0}", "server.max_upload_bytes", "must be at least 1"),
        ("server: {max_upload_bytes: 2.5}", "server.max_upload_bytes", "expected a size"),
        ("limits: {max_file_bytes: 5 XB}", "limits.max_file_bytes", "unknown size unit"),
        ("watcher: {settle_seconds: soon}", "watcher.settle_seconds", "is not a duration"),
        ("watcher: {settle_seconds: -1}", "watcher.settle_seconds", "must be at least 0"),
        ("watcher: {poll_interval: 0}", "watcher.poll_interval", "must be greater than 0"),
        ("watcher: {rescan_interval: .inf}", "watcher.rescan_interval", "finite"),
        ("watcher: {rescan_interval: [1]}", "watcher.rescan_interval", "expected a duration"),
    ],
)
def test_size_and_duration_problems_in_a_file(
    tmp_path: Path, line: str, key: str, message: str
) -> None:
    problem = only_problem(f"folders: [/p]\n\n{line}\n", tmp_path)
    assert (problem.key_path, problem.line) == (key, 3)
    assert message in problem.message


# --- paths ----------------------------------------------------------------------------------


def test_environment_variables_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICS", "/mnt/pics")
    config = parse("folders: [$PICS/a, '${PICS}/b', /x/$$RECYCLE]", tmp_path)
    assert [f.path for f in config.folders] == [
        Path("/mnt/pics/a"),
        Path("/mnt/pics/b"),
        Path("/x/$RECYCLE"),
    ]


def test_unset_environment_variable_is_named(tmp_path: Path) -> None:
    problem = only_problem("folders:\n  - /ok\n  - path: ${NOPE_NOT_SET}/x\n", tmp_path)
    assert problem.key_path == "folders[1].path"
    assert problem.line == 3
    assert "$NOPE_NOT_SET is not set" in problem.message


def test_tilde_expands_to_home(tmp_path: Path, clean_env: Path) -> None:
    config = parse("folders: [~/Pictures]\nindex: {data_dir: ~/wmpd-data}", tmp_path)
    assert config.folders[0].path == clean_env / "Pictures"
    assert config.index.data_dir == clean_env / "wmpd-data"


def test_missing_folder_is_fine_but_a_file_is_not(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    problem = only_problem("folders:\n  - does-not-exist\n  - a-file\n", tmp_path)
    assert (problem.key_path, problem.line) == ("folders[1]", 3)
    assert "exists but is not a directory" in problem.message


def test_data_dir_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WMPD_DATA_DIR", str(tmp_path / "from-env"))
    config = parse("folders: [/p]\nindex: {data_dir: /from-file}\n", tmp_path)
    assert config.index.data_dir == tmp_path / "from-env"


def test_data_dir_override_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_text("", encoding="utf-8")
    monkeypatch.setenv("WMPD_DATA_DIR", str(tmp_path / "f"))
    problem = only_problem("folders: [/p]\n", tmp_path)
    assert "WMPD_DATA_DIR" in problem.key_path


# --- folders --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        ("model: {}\n", "folders", 1, "is required"),
        ("folders: []\n", "folders", 1, "is empty"),
        ("folders: /p\n", "folders", 1, "expected a list of folders, got the string '/p'"),
        ("folders:\n  - 12\n", "folders[0]", 2, "expected a folder path or a mapping"),
        ("folders:\n  -\n", "folders[0]", 2, "got null"),
        ("folders:\n  - recursive: true\n", "folders[0].path", 2, "is required"),
        ("folders:\n  - path: ''\n", "folders[0].path", 2, "must not be empty"),
    ],
)
def test_folder_problems(tmp_path: Path, text: str, key: str, line: int, message: str) -> None:
    problem = only_problem(text, tmp_path)
    assert (problem.key_path, problem.line) == (key, line)
    assert message in problem.message


def test_nested_folders_name_both_keys(tmp_path: Path) -> None:
    problem = only_problem("folders:\n  - /a/b/c\n  - path: /a/b\n", tmp_path)
    assert (problem.key_path, problem.line) == ("folders[0]", 2)
    assert "/a/b/c is inside folders[1] (/a/b)" in problem.message


def test_duplicate_folders_name_both_keys(tmp_path: Path) -> None:
    problem = only_problem("folders:\n  - /a\n  - /b\n  - /a/x/..\n", tmp_path)
    assert (problem.key_path, problem.line) == ("folders[2]", 4)
    assert "listed twice (also as folders[0])" in problem.message


def test_sibling_with_common_prefix_is_not_nested(tmp_path: Path) -> None:
    config = parse("folders: [/a/pic, /a/pictures]", tmp_path)
    assert len(config.folders) == 2


def test_folder_inside_a_non_recursive_one_is_allowed(tmp_path: Path) -> None:
    config = parse("folders:\n  - {path: /a, recursive: false}\n  - /a/b\n", tmp_path)
    assert [f.path for f in config.folders] == [Path("/a"), Path("/a/b")]


# --- model ----------------------------------------------------------------------------------


def test_model_config_json_path_is_made_absolute(tmp_path: Path) -> None:
    config = parse("folders: [/p]\nmodel: {name: tests/models/tiny-clip.json}\n", REPO)
    assert config.model.name == str(TINY_MODEL_JSON)


@pytest.mark.parametrize("name", ["ViT-B-32", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"])
def test_builtin_and_hub_model_names_are_kept(tmp_path: Path, name: str) -> None:
    assert parse(f"folders: [/p]\nmodel: {{name: '{name}'}}\n", tmp_path).model.name == name


def test_missing_model_config_json(tmp_path: Path) -> None:
    problem = only_problem("folders: [/p]\nmodel:\n  name: custom.json\n", tmp_path)
    assert (problem.key_path, problem.line) == ("model.name", 3)
    assert f"the model config {tmp_path / 'custom.json'} does not exist" in problem.message


@pytest.mark.parametrize("file_name", ["w.pt", "w.pth", "w.bin", "w.SAFETENSORS", "sub/weights"])
def test_local_checkpoint_is_made_absolute(tmp_path: Path, file_name: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / file_name).write_bytes(b"")
    config = parse(f"folders: [/p]\nmodel: {{pretrained: {file_name}}}\n", tmp_path)
    assert config.model.pretrained == str(tmp_path / file_name)


def test_missing_checkpoint(tmp_path: Path) -> None:
    problem = only_problem("folders: [/p]\nmodel:\n  pretrained: ~/w.safetensors\n", tmp_path)
    assert (problem.key_path, problem.line) == ("model.pretrained", 3)
    assert "w.safetensors does not exist" in problem.message


def test_checkpoint_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "w.pt").mkdir()
    problem = only_problem("folders: [/p]\nmodel:\n  pretrained: w.pt\n", tmp_path)
    assert "is not a file" in problem.message


def test_pretrained_tag_and_null(tmp_path: Path) -> None:
    assert (
        parse("folders: [/p]\nmodel: {pretrained: openai}", tmp_path).model.pretrained == "openai"
    )
    assert parse("folders: [/p]\nmodel: {pretrained: null}", tmp_path).model.pretrained is None


# --- server token ---------------------------------------------------------------------------


def test_non_loopback_host_needs_a_token(tmp_path: Path) -> None:
    problem = only_problem("folders: [/p]\nserver:\n  port: 80\n  host: 0.0.0.0\n", tmp_path)
    assert (problem.key_path, problem.line) == ("server.token", 4)
    assert "0.0.0.0" in problem.message


@pytest.mark.parametrize(
    "server",
    [
        "{host: localhost}",
        "{host: '::1'}",
        "{host: '[::1]'}",
        "{host: 127.0.0.2}",
        "{host: 0.0.0.0, token: abc}",
        "{host: 0.0.0.0, enabled: false}",
    ],
)
def test_loopback_or_token_or_disabled_server_is_fine(tmp_path: Path, server: str) -> None:
    parse(f"folders: [/p]\nserver: {server}\n", tmp_path)


# --- many problems at once ------------------------------------------------------------------


def test_every_problem_is_reported_at_once_in_line_order(tmp_path: Path) -> None:
    problems = problems_of(
        """\
        folders:
          - /a
          - /a/b
        extensions: [jpg]
        model:
          batch_size: lots
          precison: fp32
        server:
          port: 99999
        watcher:
          settle_seconds: soon
        logging:
          level: chatty
        """,
        tmp_path,
    )
    assert [(p.key_path, p.line) for p in problems] == [
        ("folders[1]", 3),
        ("model.batch_size", 6),
        ("model.precison", 7),
        ("server.port", 9),
        ("watcher.settle_seconds", 11),
        ("logging.level", 13),
    ]


# --- the example config ---------------------------------------------------------------------


def test_example_copies_are_byte_identical() -> None:
    assert EXAMPLE.read_bytes() == PACKAGED_EXAMPLE.read_bytes()
    assert starter_config_text() == EXAMPLE.read_text(encoding="utf-8")


def test_example_parses_and_documents_the_real_defaults(clean_env: Path) -> None:
    config = load_config(EXAMPLE)
    assert config.folders == (FolderConfig(clean_env / "Pictures"),)
    assert config == Config(folders=config.folders)


def _example_keys(node: Node, prefix: str, found: dict[str, int]) -> None:
    """Every dotted key in the example with the line it is on; list items as `[]`."""
    if isinstance(node, SequenceNode):
        for item in node.value:
            if isinstance(item, MappingNode):
                _example_keys(item, f"{prefix}[]", found)
        return
    if not isinstance(node, MappingNode):
        return
    for key_node, value_node in node.value:
        key = f"{prefix}.{key_node.value}" if prefix else key_node.value
        is_section = isinstance(value_node, MappingNode) or (
            isinstance(value_node, SequenceNode)
            and any(isinstance(item, MappingNode) for item in value_node.value)
        )
        if is_section:
            _example_keys(value_node, key, found)
        else:
            found[key] = key_node.start_mark.line + 1


def test_example_has_exactly_the_schema_keys() -> None:
    found: dict[str, int] = {}
    root = yaml.compose(EXAMPLE.read_text(encoding="utf-8"))
    assert root is not None
    _example_keys(root, "", found)
    assert set(found) - set(config_keys()) == set(), "keys in the example but not the schema"
    assert set(config_keys()) - set(found) == set(), "schema keys missing from the example"


def test_every_example_key_has_a_comment_with_its_default() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    found: dict[str, int] = {}
    root = yaml.compose("\n".join(lines))
    assert root is not None
    _example_keys(root, "", found)
    for key, line in found.items():
        comment: list[str] = []
        above = line - 2
        while above >= 0 and lines[above].strip().startswith("#"):
            comment.insert(0, lines[above])
            above -= 1
        text = " ".join(comment)
        assert comment, f"{key} (line {line}) has no comment above it"
        assert "Default" in text or "Required" in text, f"{key} does not give its default"


def test_schema_readers_cover_exactly_the_dataclass_fields() -> None:
    assert set(FOLDER_FIELDS) == {f.name for f in dataclasses.fields(FolderConfig)}
    for name, (section_class, table) in SECTIONS.items():
        assert set(table) == {f.name for f in dataclasses.fields(section_class)}, name


def test_config_keys_lists_every_dotted_key() -> None:
    keys = config_keys()
    assert "model.batch_size" in keys
    assert "folders[].path" in keys
    assert "extensions" in keys
    assert "source" not in keys
    assert len(keys) == len(set(keys)) == 25


# --- write_starter_config -------------------------------------------------------------------


def test_write_starter_config_creates_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "config.yaml"
    assert write_starter_config(target) == target
    assert target.read_text(encoding="utf-8") == starter_config_text()
    assert load_config(target).model == ModelConfig()
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]


def test_write_starter_config_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("mine\n", encoding="utf-8")
    with pytest.raises(WmpdError, match="already exists"):
        write_starter_config(target)
    assert target.read_text(encoding="utf-8") == "mine\n"
    write_starter_config(target, force=True)
    assert target.read_text(encoding="utf-8") == starter_config_text()


# --- platform paths -------------------------------------------------------------------------


def test_linux_defaults(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    assert default_config_path() == clean_env / ".config" / "wmpd" / "config.yaml"
    assert default_data_dir() == clean_env / ".local" / "share" / "wmpd"


def test_xdg_variables_are_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_config_path() == tmp_path / "cfg" / "wmpd" / "config.yaml"
    assert default_data_dir() == tmp_path / "data" / "wmpd"


def test_relative_xdg_variables_are_ignored(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/cfg")
    assert default_config_path() == clean_env / ".config" / "wmpd" / "config.yaml"


def test_macos_defaults(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/ignored")
    app = clean_env / "Library" / "Application Support" / "wmpd"
    assert default_config_path() == app / "config.yaml"
    assert default_data_dir() == app


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    assert resolve_config_path(None) == default_config_path()
    monkeypatch.setenv("WMPD_CONFIG", str(tmp_path / "env.yaml"))
    assert resolve_config_path(None) == tmp_path / "env.yaml"
    assert resolve_config_path(str(tmp_path / "cli.yaml")) == tmp_path / "cli.yaml"
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("rel.yaml") == tmp_path / "rel.yaml"


# --- round trip -----------------------------------------------------------------------------

ROOT_FOR_ROUND_TRIP = Path("/round-trip-root")
_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
).filter(lambda s: bool(s.strip()))
_name = st.text(string.ascii_letters + string.digits + " $-_.~é{}", min_size=1, max_size=10)
_name = _name.filter(lambda s: s not in (".", "..") and s.strip() == s)
_seconds = st.floats(min_value=0, max_value=1e9, allow_nan=False)


@st.composite
def _configs(draw: st.DrawFn, files: tuple[str, str]) -> Config:
    names = draw(st.lists(_name, min_size=1, max_size=4, unique=True))
    folders = tuple(
        FolderConfig(ROOT_FOR_ROUND_TRIP / n, draw(st.booleans()), tuple(draw(st.lists(_text))))
        for n in names
    )
    model = ModelConfig(
        name=draw(st.sampled_from(["ViT-B-32", "RN50", "hf-hub:org/model", files[0]])),
        pretrained=draw(st.sampled_from([None, "openai", "laion2b_s34b_b79k", files[1]])),
        precision=draw(st.sampled_from(["fp32", "bf16", "int8"])),
        threads=draw(st.integers(0, 256)),
        batch_size=draw(st.integers(1, 1024)),
        device=draw(st.sampled_from(["cpu", "cuda", "mps"])),
    )
    token = draw(st.none() | _text)
    host = draw(_text) if token is not None else draw(st.sampled_from(["127.0.0.1", "::1"]))
    server = ServerConfig(
        draw(st.booleans()), host, draw(st.integers(1, 65535)), token,
        tuple(draw(st.lists(_text))), draw(st.integers(1, 2**40)),
    )  # fmt: skip
    watcher = WatcherConfig(
        draw(_seconds), draw(_seconds), draw(st.booleans()),
        draw(st.floats(min_value=0, max_value=1e6, exclude_min=True)),
    )  # fmt: skip
    return Config(
        folders=folders,
        extensions=tuple(
            draw(st.lists(st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=5),
                          min_size=1, max_size=5, unique=True))
        ),
        exclude=tuple(draw(st.lists(_text))),
        model=model,
        index=IndexConfig(ROOT_FOR_ROUND_TRIP / draw(_name) / "data"),
        server=server,
        watcher=watcher,
        limits=LimitsConfig(draw(st.integers(1, 10**12)), draw(st.integers(1, 2**50))),
        logging=LoggingConfig(draw(st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR"]))),
    )  # fmt: skip


@pytest.fixture
def model_files(tmp_path: Path) -> tuple[str, str]:
    folder = tmp_path / "models $x"
    folder.mkdir()
    (folder / "arch.json").write_text("{}", encoding="utf-8")
    (folder / "weights.safetensors").write_bytes(b"")
    return str(folder / "arch.json"), str(folder / "weights.safetensors")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_dump_then_parse_round_trips(
    data: st.DataObject, model_files: tuple[str, str], tmp_path: Path
) -> None:
    config = data.draw(_configs(model_files))
    text = dump_config(config)
    assert parse_config(text, "dumped.yaml", tmp_path) == config

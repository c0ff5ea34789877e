"""Where wmpd keeps its config file and its data, per platform.

Everything reads the environment when called, never at import time, so a changed HOME or
XDG variable (in a service unit, or in a test) is honoured.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "wmpd"
CONFIG_FILE_NAME = "config.yaml"
CONFIG_ENV_VAR = "WMPD_CONFIG"


def default_config_path() -> Path:
    """The config file used when neither --config nor WMPD_CONFIG names one."""
    if _is_macos():
        return _macos_app_dir() / CONFIG_FILE_NAME
    return _xdg_dir("XDG_CONFIG_HOME", ".config") / APP_NAME / CONFIG_FILE_NAME


def default_data_dir() -> Path:
    """The folder for the catalog and the index when the config does not name one."""
    if _is_macos():
        return _macos_app_dir()
    return _xdg_dir("XDG_DATA_HOME", ".local/share") / APP_NAME


def resolve_config_path(cli_value: str | None) -> Path:
    """The config file to use: --config beats WMPD_CONFIG beats the platform default."""
    if cli_value:
        return _absolute(cli_value)
    from_env = os.environ.get(CONFIG_ENV_VAR)
    if from_env:
        return _absolute(from_env)
    return default_config_path()


def _is_macos() -> bool:
    return sys.platform == "darwin"


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def _macos_app_dir() -> Path:
    return _home() / "Library" / "Application Support" / APP_NAME


def _xdg_dir(variable: str, fallback: str) -> Path:
    # The XDG spec says a relative value is invalid and must be ignored.
    value = os.environ.get(variable, "")
    if value and os.path.isabs(value):
        return Path(value)
    return _home() / fallback


def _absolute(raw: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(raw)))

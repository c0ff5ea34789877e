"""Run wmpd as a per-user service: a systemd user unit on Linux, a launchd agent on macOS.

Planning (which file goes where, with what content, and which commands follow) is kept
apart from doing it, so the CLI can show a dry run and tests can read a plan without
touching the system. The unit and plist templates ship in `wmpd/resources/`.
"""

from __future__ import annotations

import logging
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from wmpd.errors import ServiceError

logger = logging.getLogger(__name__)

SYSTEMD = "systemd"
LAUNCHD = "launchd"
UNIT_NAME = "wmpd.service"
LAUNCHD_LABEL = "io.github.wmpd.daemon"
SYSTEMD_TEMPLATE = "wmpd.service"
LAUNCHD_TEMPLATE = "wmpd.plist"
LOG_FILE_NAME = "wmpd.log"
LOG_TAIL_LINES = 200
# `systemctl restart` waits for READY=1, which the unit allows 120 s to arrive.
COMMAND_TIMEOUT_SECONDS = 180
# launchd finishes a bootout asynchronously; an immediate bootstrap can fail with EIO.
BOOTSTRAP_ATTEMPTS = 3
BOOTSTRAP_RETRY_SECONDS = 1.0
LAUNCHD_PATH_DIRS = (
    "/usr/local/bin",
    "/opt/homebrew/bin",
    "/usr/bin",
    "/bin",
    "/usr/sbin",
    "/sbin",
)

_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# systemd unquotes, unescapes and expands $VARS differently per setting; paths without
# these characters mean the same thing in ExecStart= and ReadWritePaths=.
_SYSTEMD_UNSAFE = re.compile(r"[\"'\\$\x00-\x1f\x7f]")
_NO_USER_MANAGER = ("Failed to connect to bus", "No medium found", "XDG_RUNTIME_DIR", "DBUS_")
_NOT_INSTALLED = ("could not be found", "Could not find service", "not loaded")
_NO_GUI_DOMAIN = ("Could not find domain", "Domain does not support")


@dataclass(frozen=True)
class ServicePlan:
    """What an install or uninstall does, in order.

    First `best_effort_commands` run; they may fail (nothing loaded yet). Then
    `directories` are created and the unit file written (`content`) or, when `remove`,
    deleted. Last, `commands` run and each must succeed.
    """

    manager: str
    unit_path: Path
    content: str
    commands: list[list[str]]
    best_effort_commands: list[list[str]] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)
    remove: bool = False


def detect_manager(platform: str | None = None) -> str:
    """The service manager for `platform` (default: this one)."""
    name = sys.platform if platform is None else platform
    if name.startswith("linux"):
        return SYSTEMD
    if name == "darwin":
        return LAUNCHD
    raise ServiceError(
        f"no supported service manager on {name!r}: wmpd installs itself as a systemd user "
        "service (Linux) or a launchd agent (macOS); elsewhere start `wmpd run` yourself"
    )


def wmpd_executable() -> list[str]:
    """The command that starts this very installation of wmpd."""
    if not sys.executable:
        raise ServiceError("cannot tell which Python runs wmpd (sys.executable is empty)")
    # Not resolved: a virtualenv's python is a symlink, and following it leaves the venv.
    python = Path(os.path.abspath(sys.executable))
    script = python.parent / "wmpd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(python), "-m", "wmpd"]


def unit_path(manager: str | None = None, home: Path | None = None) -> Path:
    """Where the unit (systemd) or agent plist (launchd) lives."""
    user_home = home if home is not None else Path.home()
    if _resolve_manager(manager) == SYSTEMD:
        return _xdg_dir("XDG_CONFIG_HOME", user_home / ".config") / "systemd" / "user" / UNIT_NAME
    return user_home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def launchd_log_path(home: Path | None = None) -> Path:
    """The file the launchd agent's stdout and stderr go to."""
    user_home = home if home is not None else Path.home()
    return user_home / "Library" / "Logs" / "wmpd" / LOG_FILE_NAME


def plan_install(
    config_path: Path, data_dir: Path, manager: str | None = None, home: Path | None = None
) -> ServicePlan:
    """Plan installing (or re-installing) the service for this wmpd and `config_path`."""
    chosen = _resolve_manager(manager)
    user_home = home if home is not None else Path.home()
    config = _absolute(config_path)
    if not config.is_file():
        raise ServiceError(
            f"config file {config} does not exist: create it first (see config.example.yaml)"
        )
    executable = wmpd_executable()
    path = unit_path(chosen, user_home)
    if chosen == SYSTEMD:
        return ServicePlan(
            manager=SYSTEMD,
            unit_path=path,
            content=render_systemd_unit(executable, config, _absolute(data_dir)),
            commands=[
                _systemctl("daemon-reload"),
                _systemctl("enable", UNIT_NAME),
                # restart, not start: a re-install must pick up the new unit file.
                _systemctl("restart", UNIT_NAME),
            ],
            # The sandbox mounts these read-write; a missing one fails the start.
            directories=[_absolute(data_dir), _xdg_dir("XDG_CACHE_HOME", user_home / ".cache")],
        )
    domain = _launchd_domain()
    return ServicePlan(
        manager=LAUNCHD,
        unit_path=path,
        content=render_launchd_plist(executable, config, user_home),
        commands=[
            # A once-disabled agent refuses to bootstrap until enabled again.
            ["launchctl", "enable", f"{domain}/{LAUNCHD_LABEL}"],
            ["launchctl", "bootstrap", domain, str(path)],
        ],
        best_effort_commands=[["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"]],
        # launchd opens the log file but does not create its folder.
        directories=[launchd_log_path(user_home).parent],
    )


def plan_uninstall(manager: str | None = None, home: Path | None = None) -> ServicePlan:
    """Plan stopping the service and removing its unit file."""
    chosen = _resolve_manager(manager)
    path = unit_path(chosen, home)
    if chosen == SYSTEMD:
        return ServicePlan(
            manager=SYSTEMD,
            unit_path=path,
            content="",
            commands=[_systemctl("daemon-reload")],
            best_effort_commands=[_systemctl("disable", "--now", UNIT_NAME)],
            remove=True,
        )
    return ServicePlan(
        manager=LAUNCHD,
        unit_path=path,
        content="",
        commands=[],
        best_effort_commands=[["launchctl", "bootout", f"{_launchd_domain()}/{LAUNCHD_LABEL}"]],
        remove=True,
    )


def install(plan: ServicePlan, dry_run: bool = False) -> list[str]:
    """Carry out an install plan; returns what was done (or would be, for a dry run)."""
    if plan.remove:
        raise ServiceError("install() was given an uninstall plan; use uninstall()")
    return _describe(plan) if dry_run else _apply(plan)


def uninstall(plan: ServicePlan | None = None, dry_run: bool = False) -> list[str]:
    """Carry out an uninstall plan (default: plan_uninstall()); returns what was done."""
    chosen = plan if plan is not None else plan_uninstall()
    if not chosen.remove:
        raise ServiceError("uninstall() was given an install plan; use install()")
    return _describe(chosen) if dry_run else _apply(chosen)


def service_status(manager: str | None = None) -> str:
    """The service manager's own report on wmpd (systemctl status / launchctl print)."""
    chosen = _resolve_manager(manager)
    if chosen == SYSTEMD:
        argv = _systemctl("status", "--no-pager", "--full", UNIT_NAME)
    else:
        argv = ["launchctl", "print", f"{_launchd_domain()}/{LAUNCHD_LABEL}"]
    _require_tools(chosen, [argv])
    result = _run(chosen, argv)
    # systemctl status exits 3 for a stopped unit; its report is still the answer.
    if result.stdout.strip():
        return result.stdout.rstrip("\n")
    raise ServiceError(_failure_message(chosen, argv, result))


def service_logs_command(
    manager: str | None = None, home: Path | None = None, follow: bool = True
) -> list[str]:
    """The command that shows the daemon's log; the CLI runs it in the foreground."""
    if _resolve_manager(manager) == SYSTEMD:
        argv = ["journalctl", "--user", "-u", UNIT_NAME, "-n", str(LOG_TAIL_LINES)]
        return [*argv, "-f"] if follow else [*argv, "--no-pager"]
    log = str(launchd_log_path(home))
    # -F keeps following the file across log rotation.
    return ["tail", "-n", str(LOG_TAIL_LINES), *(["-F"] if follow else []), log]


def render_systemd_unit(executable: list[str], config_path: Path, data_dir: Path) -> str:
    """The systemd unit for these absolute paths."""
    values = {
        "EXECUTABLE": " ".join(_systemd_word(word) for word in executable),
        "CONFIG": _systemd_word(str(config_path)),
        "DATA_DIR": _systemd_word(str(data_dir)),
    }
    body = _fill_text(_strip_template_header(_read_template(SYSTEMD_TEMPLATE)), values)
    header = (
        "# Written by `wmpd service install`, which overwrites it: put your own settings in\n"
        "# a drop-in (`systemctl --user edit wmpd.service`) so they survive a re-install.\n"
    )
    return header + body


def render_launchd_plist(executable: list[str], config_path: Path, home: Path) -> str:
    """The launchd agent plist for these absolute paths, always valid XML."""
    for word in [*executable, str(config_path), str(home)]:
        if _CONTROL_CHARS.search(word):
            raise ServiceError(f"cannot put {word!r} into a plist: it has control characters")
    template = plistlib.loads(_read_template(LAUNCHD_TEMPLATE).encode("utf-8"))
    values = {
        "CONFIG": str(config_path),
        "LOG_DIR": str(launchd_log_path(home).parent),
        "PATH": _launchd_path(executable[0]),
    }
    document = _fill_plist(template, executable, values)
    return plistlib.dumps(document, sort_keys=False).decode("utf-8")


def _resolve_manager(manager: str | None) -> str:
    chosen = detect_manager() if manager is None else manager
    if chosen not in (SYSTEMD, LAUNCHD):
        raise ServiceError(f"unknown service manager {chosen!r}: use {SYSTEMD!r} or {LAUNCHD!r}")
    return chosen


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


def _xdg_dir(variable: str, default: Path) -> Path:
    # The XDG spec says relative values are invalid and must be ignored.
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else default


def _systemctl(*args: str) -> list[str]:
    return ["systemctl", "--user", *args]


def _launchd_domain() -> str:
    return f"gui/{os.getuid()}"


def _launchd_path(executable: str) -> str:
    # launchd starts agents with a bare PATH; put this wmpd's own folder first.
    dirs = [str(Path(executable).parent), *LAUNCHD_PATH_DIRS]
    return ":".join(dict.fromkeys(dirs))


def _systemd_word(word: str) -> str:
    if _SYSTEMD_UNSAFE.search(word):
        raise ServiceError(
            f"cannot put {word!r} into a systemd unit: quotes, backslashes, '$' and control "
            "characters are not supported in paths; choose a path without them"
        )
    escaped = word.replace("%", "%%")  # % starts a unit specifier such as %h
    return f'"{escaped}"' if any(ch.isspace() for ch in escaped) else escaped


def _read_template(name: str) -> str:
    return resources.files("wmpd").joinpath("resources", name).read_text(encoding="utf-8")


def _strip_template_header(text: str) -> str:
    # The leading comment block tells people how to fill the template in by hand.
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return "".join(lines[start:]).lstrip("\n")


def _fill_text(text: str, values: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise ServiceError(f"template placeholder {match.group(0)} has no value")
        return values[match.group(1)]

    # One pass, so a value that happens to contain "@CONFIG@" is never expanded again.
    return _PLACEHOLDER.sub(substitute, text)


def _fill_plist(node: Any, executable: list[str], values: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _fill_plist(value, executable, values) for key, value in node.items()}
    if isinstance(node, list):
        filled: list[Any] = []
        for item in node:
            # The executable may be several words (python -m wmpd): splice them in.
            if item == "@EXECUTABLE@":
                filled.extend(executable)
            else:
                filled.append(_fill_plist(item, executable, values))
        return filled
    if isinstance(node, str):
        return _fill_text(node, values)
    return node


def _describe(plan: ServicePlan) -> list[str]:
    lines = [
        f"would run (failure is fine): {shlex.join(argv)}" for argv in plan.best_effort_commands
    ]
    lines += [f"would create directory {d}" for d in plan.directories if not d.is_dir()]
    if plan.remove:
        lines.append(f"would remove {plan.unit_path}")
    else:
        lines.append(f"would write {plan.unit_path}")
    lines += [f"would run: {shlex.join(argv)}" for argv in plan.commands]
    missing = _missing_tools([*plan.best_effort_commands, *plan.commands])
    lines += [f"note: {tool} is not on PATH, so a real run would fail" for tool in missing]
    return lines


def _apply(plan: ServicePlan) -> list[str]:
    _require_tools(plan.manager, [*plan.best_effort_commands, *plan.commands])
    lines = [_run_best_effort(plan.manager, argv) for argv in plan.best_effort_commands]
    for directory in plan.directories:
        if not directory.is_dir():
            _guard_os(f"create {directory}", directory.mkdir, parents=True)
            lines.append(f"created directory {directory}")
    if plan.remove:
        lines.append(_remove_unit(plan.unit_path))
    else:
        _guard_os(f"write {plan.unit_path}", _write_atomically, plan.unit_path, plan.content)
        lines.append(f"wrote {plan.unit_path}")
    for argv in plan.commands:
        _run_checked(plan.manager, argv)
        lines.append(f"ran: {shlex.join(argv)}")
    return lines


def _remove_unit(path: Path) -> str:
    if not path.exists():
        return f"{path} was already gone"
    _guard_os(f"remove {path}", path.unlink)
    return f"removed {path}"


def _write_atomically(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(content, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _guard_os(what: str, action: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    try:
        action(*args, **kwargs)
    except OSError as exc:
        raise ServiceError(f"cannot {what}: {exc.strerror or exc}") from exc


def _missing_tools(commands: list[list[str]]) -> list[str]:
    tools = dict.fromkeys(argv[0] for argv in commands)
    return [tool for tool in tools if shutil.which(tool) is None]


def _require_tools(manager: str, commands: list[list[str]]) -> None:
    # Checked before anything is written, so a failed install leaves no stray unit file.
    missing = _missing_tools(commands)
    if missing:
        raise ServiceError(
            f"{missing[0]} is not on PATH, so wmpd cannot be run as a {manager} service "
            f"here. Is {manager} this system's service manager? Otherwise start "
            "`wmpd --config PATH run` from your own startup script."
        )


def _run(manager: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    logger.debug("running %s", shlex.join(argv))
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, check=False
        )
    except FileNotFoundError as exc:
        raise ServiceError(f"{argv[0]} is not on PATH; is {manager} available here?") from exc
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(
            f"`{shlex.join(argv)}` did not finish within {COMMAND_TIMEOUT_SECONDS} s; "
            "see `wmpd service logs` for what the daemon is doing"
        ) from exc


def _run_best_effort(manager: str, argv: list[str]) -> str:
    result = _run(manager, argv)
    if result.returncode == 0:
        return f"ran: {shlex.join(argv)}"
    logger.debug("ignored failure of %s: %s", shlex.join(argv), result.stderr.strip())
    return f"ran: {shlex.join(argv)} (failed, as expected when nothing was loaded)"


def _run_checked(manager: str, argv: list[str]) -> None:
    attempts = BOOTSTRAP_ATTEMPTS if argv[:2] == ["launchctl", "bootstrap"] else 1
    for attempt in range(1, attempts + 1):
        result = _run(manager, argv)
        if result.returncode == 0:
            return
        if attempt < attempts:
            time.sleep(BOOTSTRAP_RETRY_SECONDS)
    raise ServiceError(_failure_message(manager, argv, result))


def _failure_message(
    manager: str, argv: list[str], result: subprocess.CompletedProcess[str]
) -> str:
    output = (result.stderr.strip() or result.stdout.strip()) or "no output"
    return (
        f"`{shlex.join(argv)}` failed (exit {result.returncode}): {output}\n"
        f"{_hint(manager, output)}"
    )


def _hint(manager: str, output: str) -> str:
    if any(marker in output for marker in _NOT_INSTALLED):
        return "wmpd is not installed as a service: run `wmpd service install`."
    if manager == SYSTEMD:
        if any(marker in output for marker in _NO_USER_MANAGER):
            return (
                "No systemd user instance is reachable: is this a systemd login session? "
                "Over ssh or in a container run `loginctl enable-linger $USER`, log in "
                "again, and check that XDG_RUNTIME_DIR is set (/run/user/$UID)."
            )
        return "See why with `wmpd service logs` or `systemctl --user status wmpd.service`."
    if any(marker in output for marker in _NO_GUI_DOMAIN):
        return (
            "The launchd gui domain exists only while you are logged in at the Mac's "
            "screen (not just over ssh); log in there and try again."
        )
    target = f"{_launchd_domain()}/{LAUNCHD_LABEL}"
    return (
        f"See `launchctl print {target}` and {launchd_log_path()}; a disabled agent needs "
        f"`launchctl enable {target}` first."
    )

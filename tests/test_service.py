"""Installing wmpd as a systemd user service or launchd agent.

systemd-analyze checks the rendered unit for real. Where a test needs systemctl or
launchctl to answer, a small shell script of that name on PATH records its arguments:
it stands in for the operating system, not for any wmpd code.
"""

from __future__ import annotations

import configparser
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from wmpd import service
from wmpd.errors import ServiceError

REPO = Path(__file__).resolve().parent.parent
PACKAGED = REPO / "wmpd" / "resources"
CALLS_LOG = "calls.log"
# Where systemd looks up a command given without a path (systemd.exec(5)).
SYSTEMD_EXEC_SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ToolFactory = Callable[..., Path]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home directory, with no XDG overrides."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return path


@pytest.fixture
def config(home: Path) -> Path:
    path = home / "wmpd config" / "config.yaml"
    path.parent.mkdir()
    path.write_text("roots: []\n")
    return path


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only the stand-in tools a test creates."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


@pytest.fixture
def fake_tool(bin_dir: Path, tmp_path: Path) -> ToolFactory:
    """Create an executable `name` that appends its argv (tab-separated) to calls.log."""

    def create(name: str, body: str = "exit 0") -> Path:
        script = bin_dir / name
        script.write_text(
            "#!/bin/sh\n"
            f'LOG="{tmp_path / CALLS_LOG}"\n'
            f'printf "{name}" >> "$LOG"\n'
            'for arg in "$@"; do printf "\\t%s" "$arg" >> "$LOG"; done\n'
            'printf "\\n" >> "$LOG"\n'
            f"{body}\n"
        )
        script.chmod(0o755)
        return script

    return create


def recorded_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / CALLS_LOG
    if not log.exists():
        return []
    return [line.split("\t") for line in log.read_text().splitlines()]


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def unit_sections(content: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(content)
    return parser


def systemd_argv(value: str) -> list[str]:
    # Our renderer only emits double quotes and %%, where systemd and POSIX shells agree.
    return [word.replace("%%", "%") for word in shlex.split(value)]


def verify_unit(content: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze", path=os.defpath + ":/usr/bin:/bin")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install -y systemd)")
    # ExecReload= names `kill`; systemd-analyze rejects a unit whose commands are missing.
    if shutil.which("kill", path=SYSTEMD_EXEC_SEARCH_PATH) is None:
        pytest.skip("kill is not installed (apt-get install -y procps)")
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    unit = unit_dir / service.UNIT_NAME
    unit.write_text(content)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    return subprocess.run(
        [analyze, "--user", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        check=False,
    )


# --- choosing a manager and an executable ---------------------------------------------


@pytest.mark.parametrize(("platform", "manager"), [("linux", "systemd"), ("darwin", "launchd")])
def test_detect_manager_by_platform(platform: str, manager: str) -> None:
    assert service.detect_manager(platform) == manager


def test_detect_manager_refuses_other_platforms() -> None:
    with pytest.raises(ServiceError, match=r"'win32'.*systemd user service"):
        service.detect_manager("win32")


def test_unknown_manager_name_is_refused(config: Path, home: Path) -> None:
    with pytest.raises(ServiceError, match="unknown service manager 'runit'"):
        service.plan_install(config, home / "data", manager="runit")


def test_executable_is_console_script_beside_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"
    python.write_text("")
    monkeypatch.setattr(sys, "executable", str(python))
    assert service.wmpd_executable() == [str(python), "-m", "wmpd"]
    script = venv_bin / "wmpd"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert service.wmpd_executable() == [str(script)]


# --- the systemd unit -----------------------------------------------------------------


def test_rendered_unit_passes_systemd_analyze_verify(
    config: Path, home: Path, tmp_path: Path
) -> None:
    plan = service.plan_install(config, home / "data", manager="systemd")
    result = verify_unit(plan.content, tmp_path)
    assert (result.returncode, result.stderr) == (0, "")


def test_verify_would_catch_a_bad_unit(tmp_path: Path) -> None:
    # Guards the check above: warnings must show up on stderr, not just in the exit code.
    result = verify_unit("[Service]\nExecStart=/bin/true\nNicee=10\n", tmp_path)
    assert "Unknown key" in result.stderr


def test_paths_with_spaces_and_percent_are_quoted(home: Path, tmp_path: Path) -> None:
    exe_dir = tmp_path / "my tools %h"
    exe_dir.mkdir()
    executable = exe_dir / "wmpd"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    config = home / "Photo Search" / "config 100%.yaml"
    data_dir = home / "Photo Search" / "data dir"
    content = service.render_systemd_unit([str(executable)], config, data_dir)

    unit = unit_sections(content)["Service"]
    assert systemd_argv(unit["ExecStart"]) == [str(executable), "--config", str(config), "run"]
    assert systemd_argv(unit["ReadWritePaths"]) == [str(data_dir), "-%C"]
    # systemd itself finds the executable only if the quoting kept its path whole.
    result = verify_unit(content, tmp_path)
    assert (result.returncode, result.stderr) == (0, "")


def test_multiword_executable_in_exec_start(home: Path) -> None:
    python = "/opt/Python 3/bin/python3"
    content = service.render_systemd_unit([python, "-m", "wmpd"], Path("/c.yaml"), home)
    exec_start = unit_sections(content)["Service"]["ExecStart"]
    assert systemd_argv(exec_start) == [python, "-m", "wmpd", "--config", "/c.yaml", "run"]


@pytest.mark.parametrize("bad_name", ['say "cheese".yaml', "back\\slash.yaml", "$HOME.yaml"])
def test_paths_systemd_cannot_carry_are_refused(home: Path, bad_name: str) -> None:
    config = home / bad_name
    config.write_text("roots: []\n")
    with pytest.raises(ServiceError, match=r"cannot put .* into a systemd unit"):
        service.plan_install(config, home / "data", manager="systemd")


def test_unit_runs_the_daemon_as_a_polite_notify_service(config: Path, home: Path) -> None:
    data_dir = home / "data"
    plan = service.plan_install(config, data_dir, manager="systemd")
    unit = unit_sections(plan.content)
    svc = unit["Service"]
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    assert svc["Restart"] == "on-failure"
    assert svc["ExecReload"] == "kill -HUP $MAINPID"  # the daemon re-reads its config
    assert svc["ProtectSystem"] == "strict"
    assert svc["ProtectHome"] == "read-only"
    assert svc["ReadWritePaths"].split()[0] == str(data_dir)
    assert svc["NoNewPrivileges"] == svc["PrivateTmp"] == "yes"
    assert svc["CPUWeight"] != "idle"
    assert svc["IOSchedulingClass"] != "idle"
    assert "HF_HUB_OFFLINE" not in svc.get("Environment", "")
    assert unit["Install"]["WantedBy"] == "default.target"
    assert "@" not in plan.content.replace("#Environment", "")
    assert plan.content.startswith("# Written by `wmpd service install`")


def test_unit_path_honours_xdg_config_home(
    config: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdg = tmp_path / "xdg config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    plan = service.plan_install(config, home / "data", manager="systemd")
    assert plan.unit_path == xdg / "systemd" / "user" / "wmpd.service"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # invalid per the XDG spec
    plan = service.plan_install(config, home / "data", manager="systemd")
    assert plan.unit_path == home / ".config" / "systemd" / "user" / "wmpd.service"


# --- the launchd agent ----------------------------------------------------------------


def test_plist_has_the_keys_launchd_needs(config: Path, home: Path) -> None:
    plan = service.plan_install(config, home / "data", manager="launchd")
    assert plan.unit_path == home / "Library" / "LaunchAgents" / "io.github.wmpd.daemon.plist"
    agent = plistlib.loads(plan.content.encode())
    executable = service.wmpd_executable()
    assert agent["Label"] == service.LAUNCHD_LABEL == "io.github.wmpd.daemon"
    assert agent["ProgramArguments"] == [*executable, "--config", str(config), "run"]
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    logs = home / "Library" / "Logs" / "wmpd"
    assert Path(agent["StandardOutPath"]).parent == logs
    assert Path(agent["StandardErrorPath"]).parent == logs
    assert agent["ProcessType"] in {"Standard", "Background", "Adaptive"}
    assert agent["LowPriorityIO"] is True
    assert agent["Nice"] > 0
    path_dirs = agent["EnvironmentVariables"]["PATH"].split(":")
    assert path_dirs[0] == str(Path(executable[0]).parent)
    assert "/usr/bin" in path_dirs


def test_plist_splices_a_multiword_executable_and_escapes_xml(home: Path) -> None:
    config = home / '<Tom & Jerry\'s> "pics".yaml'
    content = service.render_launchd_plist(["/usr/bin/python3", "-m", "wmpd"], config, home)
    agent = plistlib.loads(content.encode())
    assert agent["ProgramArguments"] == [
        "/usr/bin/python3",
        "-m",
        "wmpd",
        "--config",
        str(config),
        "run",
    ]
    assert "@" not in content


@pytest.mark.parametrize("manager", ["systemd", "launchd"])
def test_service_command_line_is_one_wmpd_understands(home: Path, manager: str) -> None:
    # Run the exact argv the service manager would, on an invalid config: wmpd must get
    # as far as reading the config (exit 2 with its problems), not stop at a usage error.
    config = home / "bad config.yaml"
    config.write_text("bogus_key: 1\n")
    plan = service.plan_install(config, home / "data", manager=manager)
    if manager == "systemd":
        argv = systemd_argv(unit_sections(plan.content)["Service"]["ExecStart"])
    else:
        argv = plistlib.loads(plan.content.encode())["ProgramArguments"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert "usage:" not in result.stderr
    assert "bogus_key" in result.stderr
    assert result.returncode == 2  # what RestartPreventExitStatus= names


# --- templates shipped twice ----------------------------------------------------------


@pytest.mark.parametrize(
    ("repo_copy", "packaged"),
    [
        ("systemd/wmpd.service", "wmpd.service"),
        ("launchd/io.github.wmpd.daemon.plist", "wmpd.plist"),
    ],
)
def test_repo_copies_equal_packaged_templates(repo_copy: str, packaged: str) -> None:
    assert (REPO / repo_copy).read_text() == (PACKAGED / packaged).read_text()


def test_plist_template_is_itself_a_valid_plist() -> None:
    template = plistlib.loads((PACKAGED / "wmpd.plist").read_bytes())
    assert template["ProgramArguments"][0] == "@EXECUTABLE@"


# --- dry runs -------------------------------------------------------------------------


@pytest.mark.parametrize("manager", ["systemd", "launchd"])
def test_dry_run_writes_nothing_and_reports_paths(
    config: Path, home: Path, tmp_path: Path, manager: str
) -> None:
    before = tree(tmp_path)
    plan = service.plan_install(config, home / "data", manager=manager)
    lines = service.install(plan, dry_run=True)
    assert tree(tmp_path) == before
    assert f"would write {plan.unit_path}" in lines
    assert [f"would run: {shlex.join(argv)}" for argv in plan.commands] == [
        line for line in lines if line.startswith("would run: ")
    ]
    undo = service.uninstall(service.plan_uninstall(manager), dry_run=True)
    assert f"would remove {plan.unit_path}" in undo
    assert tree(tmp_path) == before


def test_dry_run_warns_when_the_manager_is_missing(config: Path, home: Path, bin_dir: Path) -> None:
    plan = service.plan_install(config, home / "data", manager="systemd")
    lines = service.install(plan, dry_run=True)
    assert "note: systemctl is not on PATH, so a real run would fail" in lines


def test_missing_config_is_refused(home: Path) -> None:
    with pytest.raises(ServiceError, match=r"config file .*nope\.yaml does not exist"):
        service.plan_install(home / "nope.yaml", home / "data", manager="systemd")


# --- real installs against stand-in tools ---------------------------------------------


def test_systemd_install_writes_unit_and_runs_systemctl(
    config: Path, home: Path, tmp_path: Path, fake_tool: ToolFactory
) -> None:
    fake_tool("systemctl")
    data_dir = home / "data"
    plan = service.plan_install(config, data_dir, manager="systemd")
    lines = service.install(plan)

    unit = home / ".config" / "systemd" / "user" / "wmpd.service"
    assert unit.read_text() == plan.content
    assert data_dir.is_dir()
    assert (home / ".cache").is_dir()
    assert recorded_calls(tmp_path) == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "wmpd.service"],
        ["systemctl", "--user", "restart", "wmpd.service"],
    ]
    assert f"wrote {unit}" in lines
    assert lines[-1] == "ran: systemctl --user restart wmpd.service"


def test_reinstall_replaces_the_unit_atomically(
    config: Path, home: Path, fake_tool: ToolFactory
) -> None:
    fake_tool("systemctl")
    service.install(service.plan_install(config, home / "old", manager="systemd"))
    plan = service.plan_install(config, home / "new", manager="systemd")
    service.install(plan)
    assert plan.unit_path.read_text() == plan.content
    assert str(home / "new") in plan.content
    assert sorted(p.name for p in plan.unit_path.parent.iterdir()) == ["wmpd.service"]


def test_unreachable_user_manager_gives_actionable_error(
    config: Path, home: Path, fake_tool: ToolFactory
) -> None:
    fake_tool("systemctl", 'echo "Failed to connect to bus: No medium found" >&2; exit 1')
    plan = service.plan_install(config, home / "data", manager="systemd")
    with pytest.raises(ServiceError) as caught:
        service.install(plan)
    message = str(caught.value)
    assert "`systemctl --user daemon-reload` failed (exit 1)" in message
    assert "No medium found" in message
    assert "loginctl enable-linger" in message


def test_failed_start_points_at_the_logs(config: Path, home: Path, fake_tool: ToolFactory) -> None:
    fake_tool(
        "systemctl",
        'if [ "$2" = restart ]; then echo "Job for wmpd.service failed." >&2; exit 1; fi',
    )
    plan = service.plan_install(config, home / "data", manager="systemd")
    with pytest.raises(ServiceError, match=r"(?s)restart wmpd.service.*wmpd service logs"):
        service.install(plan)


def test_install_without_systemctl_fails_before_writing(
    config: Path, home: Path, tmp_path: Path, bin_dir: Path
) -> None:
    before = tree(tmp_path)
    plan = service.plan_install(config, home / "data", manager="systemd")
    with pytest.raises(ServiceError, match="systemctl is not on PATH"):
        service.install(plan)
    assert tree(tmp_path) == before


def test_real_systemctl_without_a_user_manager_gives_the_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("systemctl") is None:
        pytest.skip("systemctl is not installed (apt-get install -y systemd)")
    # Point systemctl at an empty runtime dir: no user manager can answer there.
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    with pytest.raises(ServiceError, match=r"(?s)Failed to connect to bus.*enable-linger"):
        service.service_status("systemd")


def test_systemd_uninstall_stops_removes_and_reloads(
    config: Path, home: Path, tmp_path: Path, fake_tool: ToolFactory
) -> None:
    fake_tool("systemctl", '[ "$2" = disable ] && exit 5; exit 0')
    plan = service.plan_install(config, home / "data", manager="systemd")
    service.install(plan)
    (tmp_path / CALLS_LOG).unlink()

    lines = service.uninstall(service.plan_uninstall("systemd"))
    assert not plan.unit_path.exists()
    assert recorded_calls(tmp_path) == [
        ["systemctl", "--user", "disable", "--now", "wmpd.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert f"removed {plan.unit_path}" in lines
    again = service.uninstall(service.plan_uninstall("systemd"))
    assert f"{plan.unit_path} was already gone" in again


def test_plans_go_to_the_matching_function(config: Path, home: Path) -> None:
    with pytest.raises(ServiceError, match="uninstall plan"):
        service.install(service.plan_uninstall("systemd"))
    with pytest.raises(ServiceError, match="install plan"):
        service.uninstall(service.plan_install(config, home / "data", manager="systemd"))


def test_launchd_install_boots_out_then_bootstraps(
    config: Path, home: Path, tmp_path: Path, fake_tool: ToolFactory
) -> None:
    fake_tool(
        "launchctl",
        '[ "$1" = bootout ] && { echo "Boot-out failed: 3: No such process" >&2; exit 3; }; exit 0',
    )
    plan = service.plan_install(config, home / "data", manager="launchd")
    service.install(plan)
    target = f"gui/{os.getuid()}"
    assert plan.unit_path.read_text() == plan.content
    assert (home / "Library" / "Logs" / "wmpd").is_dir()
    assert recorded_calls(tmp_path) == [
        ["launchctl", "bootout", f"{target}/io.github.wmpd.daemon"],
        ["launchctl", "enable", f"{target}/io.github.wmpd.daemon"],
        ["launchctl", "bootstrap", target, str(plan.unit_path)],
    ]


def test_launchd_bootstrap_retries_while_the_old_agent_unloads(
    config: Path, home: Path, tmp_path: Path, fake_tool: ToolFactory
) -> None:
    marker = tmp_path / "first-bootstrap-done"
    fake_tool(
        "launchctl",
        f'if [ "$1" = bootstrap ] && [ ! -e "{marker}" ]; then : > "{marker}"; '
        'echo "Bootstrap failed: 5: Input/output error" >&2; exit 5; fi',
    )
    service.install(service.plan_install(config, home / "data", manager="launchd"))
    bootstraps = [call for call in recorded_calls(tmp_path) if call[1] == "bootstrap"]
    assert len(bootstraps) == 2


def test_launchd_persistent_bootstrap_failure_is_explained(
    config: Path, home: Path, fake_tool: ToolFactory
) -> None:
    fake_tool(
        "launchctl",
        '[ "$1" = bootstrap ] && { echo "Bootstrap failed: 5: Input/output error" >&2; exit 5; }'
        "; exit 0",
    )
    plan = service.plan_install(config, home / "data", manager="launchd")
    with pytest.raises(ServiceError, match=r"(?s)Input/output error.*launchctl enable"):
        service.install(plan)


# --- status and logs ------------------------------------------------------------------


def test_status_returns_the_managers_report_even_when_stopped(
    home: Path, fake_tool: ToolFactory
) -> None:
    fake_tool(
        "systemctl", 'echo "○ wmpd.service - wmpd"; echo "   Active: inactive (dead)"; exit 3'
    )
    assert service.service_status("systemd") == "○ wmpd.service - wmpd\n   Active: inactive (dead)"


def test_status_of_a_missing_service_says_how_to_install(
    home: Path, fake_tool: ToolFactory
) -> None:
    fake_tool("systemctl", 'echo "Unit wmpd.service could not be found." >&2; exit 4')
    with pytest.raises(ServiceError, match="wmpd service install"):
        service.service_status("systemd")


def test_status_without_the_manager_is_an_error(home: Path, bin_dir: Path) -> None:
    with pytest.raises(ServiceError, match="launchctl is not on PATH"):
        service.service_status("launchd")


def test_logs_commands(home: Path) -> None:
    assert service.service_logs_command("systemd") == [
        "journalctl",
        "--user",
        "-u",
        "wmpd.service",
        "-n",
        "200",
        "-f",
    ]
    log = str(home / "Library" / "Logs" / "wmpd" / "wmpd.log")
    assert service.service_logs_command("launchd") == ["tail", "-n", "200", "-F", log]
    assert service.service_logs_command("launchd", follow=False) == ["tail", "-n", "200", log]

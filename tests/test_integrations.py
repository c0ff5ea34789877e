"""The launcher integrations (rofi, Alfred, ulauncher, Raycast) against a real `wmpd run`.

One daemon per module: `python -m wmpd --config <tmp config> run` on a free port, with a
token, over a folder of rendered pictures, polled until every picture is indexed. Each
script then runs as its own subprocess under `python -S` (no site-packages: the scripts
must need nothing but the standard library), from its own folder, as a launcher would.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, write_test_config
from tests.synthetic import make_labelled_folder

INTEGRATIONS = REPO / "integrations"
ROFI = INTEGRATIONS / "rofi" / "wmpd-rofi"
ALFRED = INTEGRATIONS / "alfred" / "wmpd-alfred.py"
ULAUNCHER = INTEGRATIONS / "ulauncher" / "pic_items.py"
RAYCAST_SEARCH = INTEGRATIONS / "raycast" / "wmpd-search-pictures.py"
RAYCAST_OPEN = INTEGRATIONS / "raycast" / "wmpd-open-picture.py"
SCRIPTS = (ROFI, ALFRED, ULAUNCHER, RAYCAST_SEARCH, RAYCAST_OPEN)
LISTING_SCRIPTS = (ROFI, ALFRED, ULAUNCHER, RAYCAST_SEARCH)
FOLDERS = ("rofi", "alfred", "ulauncher", "raycast")

NOT_RUNNING = "wmpd is not running: start it with `wmpd run` or `wmpd service install`"
TOKEN = "launcher-test-token"
READY_SECONDS = 120.0
SCRIPT_SECONDS = 30.0
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class RunningDaemon:
    url: str
    token: str
    photos: Path
    pictures: int

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with _OPENER.open(request, timeout=10) as response:
            return json.loads(response.read())


# The daemon is local: never ask a proxy from the environment for it.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_indexed(
    process: subprocess.Popen[bytes], url: str, pictures: int, log: Path
) -> None:
    deadline = time.monotonic() + READY_SECONDS
    status: Any = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`wmpd run` exited with {process.returncode}:\n{log.read_text()}")
        try:
            with _OPENER.open(url + "/healthz", timeout=2):
                pass
            request = urllib.request.Request(
                url + "/api/status", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            with _OPENER.open(request, timeout=5) as response:
                status = json.loads(response.read())
        except (OSError, ValueError):
            status = None
        if status and status.get("model_ready") and status.get("images") == pictures:
            return
        time.sleep(0.25)
    pytest.fail(f"wmpd did not index {pictures} pictures: {status}\n{log.read_text()}")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[RunningDaemon]:
    root = tmp_path_factory.mktemp("launchers")
    photos = root / "photos"
    pictures = len(make_labelled_folder(photos, seed=11, sizes=(96, 240)))
    port = free_port()
    write_test_config(root, photos, port=port)
    config_path = root / "config.yaml"
    server_block = f"server:\n  port: {port}\n"
    text = config_path.read_text()
    assert server_block in text
    config_path.write_text(text.replace(server_block, f"{server_block}  token: {TOKEN}\n"))
    log = root / "daemon.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "wmpd", "--config", str(config_path), "run"],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_indexed(process, url, pictures, log)
        yield RunningDaemon(url, TOKEN, photos, pictures)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def launcher_env(tmp_path: Path) -> dict[str, str]:
    """The environment a launcher gives a script: no WMPD_* settings, a private home."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WMPD_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    for name in ("ROFI_RETV", "ROFI_INFO", "alfred_workflow_cache"):
        env.pop(name, None)
    return env


@pytest.fixture
def env(launcher_env: dict[str, str], daemon: RunningDaemon, tmp_path: Path) -> dict[str, str]:
    """Settings for the test daemon, with thumbnails cached under tmp_path."""
    return {
        **launcher_env,
        "WMPD_URL": daemon.url,
        "WMPD_TOKEN": daemon.token,
        "WMPD_THUMB_CACHE": str(tmp_path / "thumbs"),
    }


def run_script(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-S", str(script), *args],
        cwd=script.parent,
        env=env,
        capture_output=True,
        timeout=SCRIPT_SECONDS,
        check=False,
    )


def rofi_lines(stdout: bytes) -> tuple[dict[str, str], list[tuple[str, dict[str, str]]]]:
    """Mode options and rows (text, row options) from a rofi script's output."""
    mode: dict[str, str] = {}
    rows: list[tuple[str, dict[str, str]]] = []
    for line in stdout.decode("utf-8").split("\n")[:-1]:
        text, _, extras = line.partition("\0")
        fields = extras.split("\x1f") if extras else []
        assert len(fields) % 2 == 0, f"odd option fields in {line!r}"
        options = dict(zip(fields[::2], fields[1::2], strict=True))
        if text == "":
            mode.update(options)
        else:
            rows.append((text, options))
    assert stdout.endswith(b"\n") or stdout == b""
    return mode, rows


def listed_paths(script: Path, daemon: RunningDaemon, stdout: bytes) -> list[str]:
    """The pictures a listing script showed, best first."""
    if script == ROFI:
        _, rows = rofi_lines(stdout)
        return [daemon.api(f"/api/images/{int(row['info'])}")["paths"][0] for _, row in rows]
    if script == ALFRED:
        return [item["arg"] for item in json.loads(stdout)["items"]]
    if script == ULAUNCHER:
        return [item["path"] for item in json.loads(stdout)]
    return re.findall(r"^ +\d+\. (/.+)$", stdout.decode("utf-8"), re.MULTILINE)


def recorder(tmp_path: Path) -> tuple[str, Path]:
    """An open command that writes the path it was given to a file, and that file."""
    record = tmp_path / "opened.txt"
    script = tmp_path / "record_open.py"
    script.write_text(
        f"import pathlib, sys\npathlib.Path({str(record)!r}).write_text(sys.argv[1])\n"
    )
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", record


def wait_for_file(path: Path, seconds: float = 15.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    pytest.fail(f"nothing was opened ({path} never appeared)")


# -- packaging --------------------------------------------------------------------------


def test_client_copies_are_identical() -> None:
    copies = {name: (INTEGRATIONS / name / "wmpd_client.py").read_bytes() for name in FOLDERS}
    assert len(set(copies.values())) == 1, "integrations/*/wmpd_client.py differ: copy one over"


@pytest.mark.parametrize("script", [*SCRIPTS, INTEGRATIONS / "ulauncher" / "main.py"])
def test_scripts_run_on_older_python3(script: Path) -> None:
    # macOS ships Python 3.9 as python3: no syntax newer than that.
    ast.parse(script.read_text(), filename=str(script), feature_version=(3, 9))
    ast.parse((script.parent / "wmpd_client.py").read_text(), feature_version=(3, 9))


@pytest.mark.parametrize("script", [ROFI, ALFRED, RAYCAST_SEARCH, RAYCAST_OPEN])
def test_scripts_are_executable(script: Path) -> None:
    assert os.access(script, os.X_OK), f"chmod +x {script}"
    assert script.read_text().startswith("#!/usr/bin/env python3\n")


def test_raycast_headers() -> None:
    for script, mode in ((RAYCAST_SEARCH, "fullOutput"), (RAYCAST_OPEN, "silent")):
        header = dict(re.findall(r"^# @raycast\.(\w+) (.+)$", script.read_text(), re.MULTILINE))
        assert header["schemaVersion"] == "1"
        assert header["mode"] == mode
        assert header["title"]
        argument = json.loads(header["argument1"])
        assert argument["type"] == "text"
        assert argument.get("optional", False) is False


def test_ulauncher_manifest() -> None:
    folder = INTEGRATIONS / "ulauncher"
    manifest = json.loads((folder / "manifest.json").read_text())
    versions = json.loads((folder / "versions.json").read_text())
    assert (folder / manifest["icon"]).is_file()
    keywords = [p for p in manifest["preferences"] if p["type"] == "keyword"]
    assert [p["default_value"] for p in keywords] == ["pic"]
    preference_ids = {p["id"] for p in manifest["preferences"]}
    main_source = (folder / "main.py").read_text()
    for used in re.findall(r'preferences\.get\("(\w+)"\)', main_source):
        assert used in preference_ids
    assert versions[0]["required_api_version"] == manifest["required_api_version"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_readmes_say_how_to_configure(folder: str) -> None:
    text = (INTEGRATIONS / folder / "README.md").read_text()
    for needed in ("WMPD_URL", "WMPD_TOKEN", "http://127.0.0.1:8756"):
        assert needed in text, f"{folder}/README.md does not mention {needed}"


# -- against the daemon -------------------------------------------------------------------


def test_rofi_rows_carry_thumbnails(daemon: RunningDaemon, env: dict[str, str]) -> None:
    result = run_script(ROFI, "a red circle", env={**env, "ROFI_RETV": "2"})
    assert result.returncode == 0, result.stderr
    mode, rows = rofi_lines(result.stdout)
    assert mode["prompt"] == "pic"
    assert "a red circle" in mode["message"]
    assert len(rows) == daemon.pictures  # fewer than the default 20
    cache = Path(env["WMPD_THUMB_CACHE"])
    for text, options in rows:
        icon = Path(options["icon"])
        assert icon.parent == cache
        assert icon.read_bytes().startswith(JPEG_MAGIC)
        assert options["info"].isdigit()
        path = Path(daemon.api(f"/api/images/{options['info']}")["paths"][0])
        assert text.startswith(path.name)
    # A second search reuses the cached thumbnails.
    before = {entry.name: entry.stat().st_ino for entry in cache.iterdir()}
    again = run_script(ROFI, "a red circle", env={**env, "ROFI_RETV": "2"})
    assert rofi_lines(again.stdout)[1] == rows
    assert {entry.name: entry.stat().st_ino for entry in cache.iterdir()} == before


def test_rofi_first_call_shows_the_prompt(env: dict[str, str]) -> None:
    result = run_script(ROFI, env={**env, "ROFI_RETV": "0"})
    assert result.returncode == 0, result.stderr
    mode, rows = rofi_lines(result.stdout)
    assert mode["prompt"] == "pic"
    assert mode["message"]
    assert rows == []


def test_rofi_choice_opens_the_picture(
    daemon: RunningDaemon, env: dict[str, str], tmp_path: Path
) -> None:
    _, rows = rofi_lines(run_script(ROFI, "a blue square", env=env).stdout)
    text, options = rows[2]
    command, record = recorder(tmp_path)
    choose = {**env, "ROFI_RETV": "1", "ROFI_INFO": options["info"], "WMPD_OPEN_COMMAND": command}
    result = run_script(ROFI, text, env=choose)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""  # no rows: rofi closes
    opened = Path(wait_for_file(record))
    assert opened.parent == daemon.photos
    assert opened == Path(daemon.api(f"/api/images/{options['info']}")["paths"][0])


def test_alfred_items(daemon: RunningDaemon, env: dict[str, str], tmp_path: Path) -> None:
    alfred_env = {key: value for key, value in env.items() if key != "WMPD_THUMB_CACHE"}
    alfred_env["alfred_workflow_cache"] = str(tmp_path / "alfred-cache")
    result = run_script(ALFRED, "a green triangle", env=alfred_env)
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)["items"]
    assert len(items) == daemon.pictures
    uids = set()
    for item in items:
        assert item["type"] == "file"
        assert Path(item["arg"]).is_file()
        assert Path(item["arg"]).parent == daemon.photos
        assert item["title"] == Path(item["arg"]).name
        assert item["quicklookurl"] == item["arg"]
        assert item["subtitle"]
        icon = Path(item["icon"]["path"])
        assert icon.parent == tmp_path / "alfred-cache" / "thumbnails"
        assert icon.read_bytes().startswith(JPEG_MAGIC)
        uids.add(item["uid"])
    assert len(uids) == len(items)


def test_alfred_empty_query_asks_for_one(env: dict[str, str]) -> None:
    result = run_script(ALFRED, "", env=env)
    [item] = json.loads(result.stdout)["items"]
    assert item["valid"] is False
    assert item["title"]


def test_ulauncher_items(daemon: RunningDaemon, env: dict[str, str]) -> None:
    result = run_script(ULAUNCHER, "a", "yellow", "star", env={**env, "WMPD_RESULTS": "4"})
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)
    assert len(items) == 4
    for item in items:
        assert Path(item["path"]).parent == daemon.photos
        assert item["name"] == Path(item["path"]).name
        assert Path(item["icon"]).read_bytes().startswith(JPEG_MAGIC)
        assert item["description"]


def test_raycast_lists_paths(daemon: RunningDaemon, env: dict[str, str]) -> None:
    result = run_script(RAYCAST_SEARCH, "a red circle", env=env)
    assert result.returncode == 0, result.stderr
    paths = listed_paths(RAYCAST_SEARCH, daemon, result.stdout)
    assert len(paths) == daemon.pictures
    assert all(Path(path).parent == daemon.photos for path in paths)
    assert f"{daemon.pictures} pictures" in result.stdout.decode()


def test_raycast_opens_the_top_hit(
    daemon: RunningDaemon, env: dict[str, str], tmp_path: Path
) -> None:
    listing = run_script(RAYCAST_SEARCH, "a purple square", env=env)
    top = listed_paths(RAYCAST_SEARCH, daemon, listing.stdout)[0]
    command, record = recorder(tmp_path)
    result = run_script(RAYCAST_OPEN, "a purple square", env={**env, "WMPD_OPEN_COMMAND": command})
    assert result.returncode == 0, result.stderr
    assert wait_for_file(record) == top
    assert result.stdout.decode().strip().splitlines()[-1] == f"Opened {Path(top).name}"


@pytest.mark.parametrize("script", LISTING_SCRIPTS, ids=lambda script: script.name)
def test_query_is_url_encoded(daemon: RunningDaemon, env: dict[str, str], script: Path) -> None:
    # Sent as it is, "&k=1" would be a parameter of its own and give one result.
    query = "red & blue?#&k=1 été/%"
    result = run_script(script, query, env={**env, "WMPD_RESULTS": "3"})
    paths = listed_paths(script, daemon, result.stdout)
    assert len(paths) == 3, result.stdout
    assert all(Path(path).parent == daemon.photos for path in paths)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.name)
def test_daemon_not_running(launcher_env: dict[str, str], script: Path) -> None:
    env = {**launcher_env, "WMPD_URL": f"http://127.0.0.1:{free_port()}"}
    started = time.monotonic()
    result = run_script(script, "a red circle", env=env)
    assert time.monotonic() - started < 10
    output = result.stdout.decode() + result.stderr.decode()
    assert NOT_RUNNING in output
    if script == ALFRED:
        [item] = json.loads(result.stdout)["items"]
        assert item["title"] == NOT_RUNNING
        assert item["valid"] is False
    elif script == ROFI:
        assert result.returncode == 1  # outside rofi; inside it, the rows below say it
        _, rows = rofi_lines(result.stdout)
        assert rows[0] == (NOT_RUNNING, {"nonselectable": "true"})
    else:
        assert result.returncode != 0


def test_rofi_in_rofi_reports_the_daemon_down(launcher_env: dict[str, str]) -> None:
    env = {**launcher_env, "WMPD_URL": f"http://127.0.0.1:{free_port()}", "ROFI_RETV": "0"}
    result = run_script(ROFI, env=env)
    assert result.returncode == 0  # rofi stays open and shows the message
    mode, rows = rofi_lines(result.stdout)
    assert NOT_RUNNING in mode["message"]
    assert rows[0] == (NOT_RUNNING, {"nonselectable": "true"})


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.name)
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"WMPD_TOKEN": ""}, "wmpd needs its token"),
        ({"WMPD_TOKEN": "wrong"}, "WMPD_TOKEN was refused"),
        ({"WMPD_URL_SUFFIX": "/no/such/route"}, "wmpd: "),
    ],
    ids=["no-token", "wrong-token", "not-found"],
)
def test_api_errors_are_reported(
    daemon: RunningDaemon,
    env: dict[str, str],
    script: Path,
    change: dict[str, str],
    expected: str,
) -> None:
    env = {**env, **change}
    env["WMPD_URL"] += env.pop("WMPD_URL_SUFFIX", "")
    result = run_script(script, "a red circle", env=env)
    output = result.stdout.decode() + result.stderr.decode()
    assert expected in output
    assert "Traceback" not in output
    if script == ALFRED:
        assert json.loads(result.stdout)["items"][0]["valid"] is False
    else:
        assert result.returncode != 0


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.name)
def test_a_silent_server_times_out(launcher_env: dict[str, str], script: Path) -> None:
    # A socket that accepts connections and never answers: a hung daemon.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = {
            **launcher_env,
            "WMPD_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "WMPD_TIMEOUT": "1",
        }
        started = time.monotonic()
        result = run_script(script, "a red circle", env=env)
        elapsed = time.monotonic() - started
    assert elapsed < 8
    assert "did not answer within 1 s" in result.stdout.decode() + result.stderr.decode()

"""Start, stop and crash real `wmpd run` processes, and talk to them over real TCP.

Every request and every injected fault goes through `TALLY`, so the suite can say at
the end how many it made (see conftest.py's summary and test-artifacts/reliability.json).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests import daemon_harness
from tests.conftest import write_test_config

T = TypeVar("T")

READY_TIMEOUT_SECONDS = 120.0  # torch import and model load on two busy cores
STOP_TIMEOUT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 30.0
# Linux capabilities that let root read any file; without them a 0o000 file is unreadable
# even to uid 0, which is how the suite makes "a file whose read fails" as root.
DAC_CAPABILITIES = "-dac_override,-dac_read_search"


@dataclass
class Tally:
    """What the suite did to wmpd, summed over the session."""

    faults: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0  # answers that were wrong: 5xx, a refused connection, a bad status
    daemon_starts: int = 0
    measurements: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fault(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self.faults[kind] = self.faults.get(kind, 0) + count

    def request(self, error: bool = False) -> None:
        with self._lock:
            self.requests += 1
            self.errors += int(error)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "faults_injected": sum(self.faults.values()),
                "faults_by_kind": dict(sorted(self.faults.items())),
                "requests_sent": self.requests,
                "errors": self.errors,
                "daemon_starts": self.daemon_starts,
                "measurements": dict(self.measurements),
            }


TALLY = Tally()


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.2,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
    host: str = "127.0.0.1",
    counted: bool = True,
) -> Answer:
    """One HTTP request on its own connection; 5xx answers count as errors in the tally.

    `counted=False` is for polls that expect a refused connection (a daemon starting).
    """
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        answer = Answer(response.status, dict(response.getheaders()), response.read())
    except OSError:
        if counted:
            TALLY.request(error=True)
        raise
    finally:
        connection.close()
    if counted:
        TALLY.request(error=answer.status >= 500)
    return answer


def raw_request(port: int, data: bytes, timeout: float = REQUEST_TIMEOUT_SECONDS) -> Answer:
    """Send bytes exactly as given (no client-side normalisation) and parse the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    TALLY.request(error=status >= 500 or status == 0)
    return Answer(status, headers, body)


class Daemon:
    """A `wmpd run` subprocess (tests/daemon_harness.py runs it) seen over HTTP.

    Restartable after a stop or a crash; all starts append to one log file, and
    `log_since_start()` is what the latest one wrote.
    """

    def __init__(self, workdir: Path, config_path: Path, port: int, drop_dac: bool = False):
        self.workdir = workdir
        self.config_path = config_path
        self.port = port
        self.data_dir = workdir / "data"
        self.drop_dac = drop_dac
        prefix = ("setpriv", "--bounding-set", DAC_CAPABILITIES, "--") if drop_dac else ()
        self.runner = daemon_harness.Daemon(config_path, workdir / "daemon.log", prefix=prefix)
        self.starts = 0
        self._log_offset = 0

    @property
    def log_path(self) -> Path:
        return self.runner.log_path

    def start(self, wait_ready: bool = True) -> Daemon:
        assert not self.alive(), "already running"
        self.starts += 1
        TALLY.daemon_starts += 1
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.runner.start()
        if wait_ready:
            self.wait_ready()
        return self

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.runner.process

    @property
    def pid(self) -> int:
        return self.runner.pid

    def alive(self) -> bool:
        return self.runner.alive()

    def log(self) -> str:
        return self.runner.log()

    def log_since_start(self) -> str:
        return self.log().encode()[self._log_offset :].decode(errors="replace")

    def describe(self) -> str:
        process = self.runner.process
        code = None if process is None else process.poll()
        state = "running" if code is None else f"exited with {code}"
        return f"daemon {state}; log {self.log_path}:\n{self.log()[-4000:]}"

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Until the model is loaded and the worker runs (status says model_ready)."""

        def ready() -> dict[str, Any] | None:
            assert self.alive(), self.describe()
            status = self.try_status()
            return status if status is not None and status["model_ready"] else None

        return wait_for(ready, timeout, "the daemon to load its model", details=self.describe)

    def try_status(self) -> dict[str, Any] | None:
        try:
            answer = request(self.port, "GET", "/api/status", timeout=10, counted=False)
        except OSError:
            return None
        return answer.json() if answer.status == 200 else None

    def status(self) -> dict[str, Any]:
        answer = self.get("/api/status")
        assert answer.status == 200, answer
        result: dict[str, Any] = answer.json()
        return result

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Answer:
        return request(self.port, "GET", path, headers=headers)

    def post_json(self, path: str, payload: object) -> Answer:
        body = json.dumps(payload).encode()
        return request(
            self.port, "POST", path, body=body, headers={"Content-Type": "application/json"}
        )

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60.0
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            assert self.alive(), self.describe()
            status = self.try_status()
            return status if status is not None and predicate(status) else None

        def details() -> str:
            return f"last status: {self.try_status()}\n{self.describe()}"

        return wait_for(probe, timeout, what, details=details)

    def wait_idle(self, timeout: float = 120.0, **counts: int) -> dict[str, Any]:
        """Until nothing is queued and the status counts (images=, paths=, failed=) match."""

        def settled(status: dict[str, Any]) -> bool:
            return (
                status["state"] == "idle"
                and status["queue"] == 0
                and all(status[key] == value for key, value in counts.items())
            )

        what = f"an idle daemon with {counts or 'an empty queue'}"
        return self.wait_status(settled, what, timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM and wait: the clean shutdown a service manager does."""
        if not self.alive():
            code = self.runner.process.returncode if self.runner.process else None
            raise AssertionError(f"not running (exit {code})\n{self.describe()}")
        try:
            code, _ = self.runner.stop(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.runner.kill()
            raise AssertionError(
                f"no exit {timeout:.0f}s after SIGTERM\n{self.describe()}"
            ) from None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash at whatever the daemon was doing."""
        self.runner.kill()

    def run_to_exit(self, timeout: float = READY_TIMEOUT_SECONDS) -> int:
        """For a start that is expected to fail: its exit code."""
        assert self.runner.process is not None
        return self.runner.process.wait(timeout)

    def cleanup(self) -> None:
        self.runner.ensure_dead()


def needs_setpriv_for_unreadable() -> bool:
    """True as root: only without its DAC capabilities is a 0o000 file unreadable to it."""
    return os.geteuid() == 0


def can_make_unreadable_files() -> bool:
    return not needs_setpriv_for_unreadable() or shutil.which("setpriv") is not None


def write_config(
    workdir: Path,
    *folders: Path,
    port: int,
    settle_seconds: float = 0.3,
    extra: str = "",
    data_dir: Path | None = None,
    batch_size: int = 8,
    server_extra: str = "",
) -> Path:
    """A real config on the repository's tiny model (tests/conftest.py writes it).

    `server_extra` holds more `server:` keys, e.g. "  host: 0.0.0.0\n".
    """
    write_test_config(
        workdir,
        *folders,
        port=port,
        settle_seconds=settle_seconds,
        extra=extra,
        data_dir=data_dir,
        batch_size=batch_size,
    )
    path = workdir / "config.yaml"
    if server_extra:
        text = path.read_text().replace(f"  port: {port}\n", f"  port: {port}\n{server_extra}")
        path.write_text(text)
    return path


class DaemonFactory:
    """Makes daemons for one test and kills whatever is left of them at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[Daemon] = []

    def __call__(
        self,
        *folders: Path,
        settle_seconds: float = 0.3,
        extra: str = "",
        data_dir: Path | None = None,
        drop_dac: bool = False,
        start: bool = True,
        name: str = "daemon",
        batch_size: int = 8,
        server_extra: str = "",
    ) -> Daemon:
        workdir = self.base / name
        workdir.mkdir(parents=True, exist_ok=True)
        port = daemon_harness.free_port()
        config = write_config(
            workdir,
            *folders,
            port=port,
            settle_seconds=settle_seconds,
            extra=extra,
            data_dir=data_dir,
            batch_size=batch_size,
            server_extra=server_extra,
        )
        daemon = Daemon(workdir, config, port, drop_dac=drop_dac)
        if data_dir is not None:
            daemon.data_dir = data_dir
        self.made.append(daemon)
        if start:
            daemon.start()
        return daemon

    def cleanup(self) -> None:
        for daemon in self.made:
            daemon.cleanup()

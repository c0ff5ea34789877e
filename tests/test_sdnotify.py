"""The sd_notify client against real AF_UNIX datagram sockets."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from wmpd.sdnotify import SystemdNotifier

RECEIVE_TIMEOUT_SECONDS = 10


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket standing in for systemd, named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(RECEIVE_TIMEOUT_SECONDS)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_ready_sends_ready_datagram(receiver: socket.socket) -> None:
    assert SystemdNotifier().ready() is True
    assert receiver.recv(4096) == b"READY=1"


def test_ready_with_status_sends_both_fields_in_one_datagram(receiver: socket.socket) -> None:
    SystemdNotifier().ready(status="serving on 127.0.0.1:8756")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=serving on 127.0.0.1:8756"


def test_each_call_sends_its_own_datagram(receiver: socket.socket) -> None:
    notifier = SystemdNotifier()
    notifier.status("indexing 3 of 10")
    notifier.watchdog()
    notifier.extend_timeout(2.5)
    notifier.stopping()
    received = [receiver.recv(4096) for _ in range(4)]
    assert received == [
        b"STATUS=indexing 3 of 10",
        b"WATCHDOG=1",
        b"EXTEND_TIMEOUT_USEC=2500000",
        b"STOPPING=1",
    ]


def test_notify_sends_arbitrary_fields_in_order(receiver: socket.socket) -> None:
    SystemdNotifier().notify(STATUS="reloading", RELOADING=1)
    assert receiver.recv(4096) == b"STATUS=reloading\nRELOADING=1"


def test_newlines_in_a_value_cannot_forge_another_field(receiver: socket.socket) -> None:
    SystemdNotifier().status("bad file\nREADY=1")
    assert receiver.recv(4096) == b"STATUS=bad file READY=1"


def test_abstract_socket_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"wmpd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECEIVE_TIMEOUT_SECONDS)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert SystemdNotifier().ready() is True
        assert sock.recv(4096) == b"READY=1"


def test_explicit_address_wins_over_environment(
    receiver: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "elsewhere.sock"))
    address = receiver.getsockname()
    assert SystemdNotifier(address).status("explicit") is True
    assert receiver.recv(4096) == b"STATUS=explicit"


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert notifier.enabled is False
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False


def test_unsupported_address_kind_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    notifier = SystemdNotifier()
    assert notifier.enabled is False
    assert notifier.ready() is False


def test_vanished_manager_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gone.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    # The socket file is left behind with nobody reading it: sendto is refused.
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = SystemdNotifier()
    with caplog.at_level(logging.DEBUG, logger="wmpd.sdnotify"):
        assert notifier.ready() is False
        path.unlink()
        assert notifier.ready() is False
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.levelno == logging.DEBUG for r in failures)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCM_CREDENTIALS is Linux-only")
def test_child_process_notifies_with_its_own_pid(receiver: socket.socket) -> None:
    # NotifyAccess=main only accepts datagrams whose sender is the service's main PID.
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    child = subprocess.Popen(
        [sys.executable, "-c", "from wmpd.sdnotify import SystemdNotifier as N; N().ready('up')"],
        env={**os.environ, "NOTIFY_SOCKET": receiver.getsockname()},
    )
    assert child.wait(timeout=60) == 0
    credentials_size = struct.calcsize("3i")
    data, ancillary, _flags, _address = receiver.recvmsg(4096, socket.CMSG_SPACE(credentials_size))
    assert data == b"READY=1\nSTATUS=up"
    level, kind, payload = ancillary[0]
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    pid, uid, _gid = struct.unpack("3i", payload[:credentials_size])
    assert (pid, uid) == (child.pid, os.getuid())

"""A tiny client for systemd's readiness protocol (sd_notify).

Under `Type=notify`, systemd hands the service a datagram socket in $NOTIFY_SOCKET and
waits for "READY=1" before it calls the start done. Outside systemd (a terminal, launchd,
tests) the variable is unset and every call here does nothing. Notification is a courtesy
to the service manager, never a reason to stop the daemon, so nothing here raises.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


class SystemdNotifier:
    """Sends state changes to the service manager named by $NOTIFY_SOCKET."""

    def __init__(self, address: str | None = None) -> None:
        """Use `address`, or $NOTIFY_SOCKET when None; an empty one disables notifying."""
        raw = os.environ.get(NOTIFY_SOCKET_ENV, "") if address is None else address
        self._address = _socket_address(raw)

    @property
    def enabled(self) -> bool:
        """Whether a usable notification socket was given."""
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram of FIELD=value lines; True when it was delivered.

        Keyword names are the protocol's field names, e.g. notify(READY=1, STATUS="up").
        """
        address = self._address
        if address is None or not fields:
            return False
        payload = "\n".join(f"{name}={_one_line(value)}" for name, value in fields.items())
        return _send(address, payload.encode("utf-8"))

    def ready(self, status: str | None = None) -> bool:
        """Tell the manager start-up is complete (and optionally what we are doing)."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """Set the one-line status `systemctl status` shows."""
        return self.notify(STATUS=text)

    def stopping(self) -> bool:
        """Tell the manager shutdown has begun, so a slow stop is not mistaken for a hang."""
        return self.notify(STOPPING=1)

    def watchdog(self) -> bool:
        """Ping the watchdog (only meaningful when the unit sets WatchdogSec=)."""
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to finish starting or stopping (e.g. a long model download)."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))


def _send(address: str | bytes, payload: bytes) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(payload, address)
    except (OSError, ValueError) as exc:
        # A manager that went away or a bad address must not take the daemon down.
        logger.debug("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def _socket_address(raw: str) -> str | bytes | None:
    """Turn $NOTIFY_SOCKET into a sendto() address: a path, or an abstract name."""
    if raw.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of "@", no filesystem entry.
        return b"\0" + raw[1:].encode("utf-8")
    if raw.startswith("/"):
        return raw
    if raw:
        # e.g. "vsock:..." from a VM manager: valid for systemd, not something we speak.
        logger.debug("ignoring unsupported %s=%r", NOTIFY_SOCKET_ENV, raw)
    return None


def _one_line(value: str | int) -> str:
    # The protocol is newline-separated assignments: a newline would start a bogus field.
    return str(value).replace("\r", " ").replace("\n", " ")

"""Proof that wmpd only ever reads photos.

`PhotoGuard` hashes every file under some folders (content, size, mtime, mode) and
watches them with its own inotify instance for anything but reading: a file opened for
writing reports IN_CLOSE_WRITE when closed, even if nothing was written, so the guard
catches an open for writing, not only a changed byte. Reads (IN_ACCESS, IN_OPEN,
IN_CLOSE_NOWRITE) are not subscribed to.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import struct
from pathlib import Path
from types import TracebackType

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_OPEN = 0x00000020
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WRITE_EVENTS = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_NAMES = {
    IN_ACCESS: "access",
    IN_OPEN: "open",
    IN_MODIFY: "modify",
    IN_ATTRIB: "attrib",
    IN_CLOSE_WRITE: "close_write",
    IN_MOVED_FROM: "moved_from",
    IN_MOVED_TO: "moved_to",
    IN_CREATE: "create",
    IN_DELETE: "delete",
    IN_DELETE_SELF: "delete_self",
    IN_MOVE_SELF: "move_self",
    IN_Q_OVERFLOW: "overflow",
}
_EVENT_HEADER = struct.Struct("iIII")

FileState = tuple[str, int, int, int]  # sha256, size, mtime_ns, mode


def snapshot(folders: list[Path]) -> dict[str, FileState]:
    """Content and metadata of every regular file (not links) under the folders."""
    files: dict[str, FileState] = {}
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                info = os.lstat(path)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                files[path] = (digest, info.st_size, info.st_mtime_ns, info.st_mode)
    return files


class InotifyWatch:
    """An inotify instance of our own on some directories (not recursive into new ones)."""

    def __init__(self, directories: list[Path], mask: int) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._watches: dict[int, str] = {}
        self._seen: list[str] = []
        for directory in directories:
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), mask)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
            self._watches[wd] = str(directory)

    def events(self) -> list[str]:
        """Every event seen so far, as 'path: kind,kind'."""
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                raise
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT_HEADER.unpack_from(data, offset)
                start = offset + _EVENT_HEADER.size
                name = os.fsdecode(data[start : start + length].rstrip(b"\0"))
                offset = start + length
                kinds = [label for bit, label in _NAMES.items() if mask & bit]
                where = os.path.join(self._watches.get(wd, "?"), name)
                self._seen.append(f"{where}: {','.join(kinds)}")
        return list(self._seen)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PhotoGuard:
    """Hashes and watches folders that nobody but wmpd (reading) may touch."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders
        self.before = snapshot(folders)
        assert self.before, "a guard over no files proves nothing"
        directories = [Path(d) for folder in folders for d, _, _ in os.walk(folder)]
        self._watch = InotifyWatch(directories, WRITE_EVENTS)
        self.released = False

    def events(self) -> list[str]:
        return self._watch.events()

    def check(self) -> None:
        """Fail when any guarded file was opened for writing, changed, moved or removed."""
        events = self.events()
        after = snapshot(self.folders)
        changed = sorted(p for p in self.before if after.get(p) != self.before[p])
        added = sorted(set(after) - set(self.before))
        assert not events, f"photos were opened for writing or changed: {events[:20]}"
        assert not changed, f"photos changed (content, size, mtime or mode): {changed[:20]}"
        assert not added, f"files appeared among the photos: {added[:20]}"

    def release(self) -> None:
        """Check now and stop guarding: the test is about to change these files itself."""
        self.check()
        self.released = True
        self.close()

    def close(self) -> None:
        self._watch.close()

    def __enter__(self) -> PhotoGuard:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if kind is None and not self.released:
                self.check()
        finally:
            self.close()

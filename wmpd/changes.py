"""Coalescing and settling file-system changes before they reach the indexer.

- create → modify → modify is one upsert; create → delete leaves only a (harmless)
  delete; delete → create is an upsert (the indexer compares content).
- A file is ready once its size and mtime have not changed for `settle_seconds` (and no
  event came for it meanwhile), so a photo still being copied is not read half-way.
- Moves are path updates and are released at once, in the order they happened; pending
  work under a moved path follows it to the new place, so everything still pending is
  expressed in terms of the tree as it is after the moves.
- A directory that appeared, vanished or lost events is *rescanned* (compared with the
  catalog) rather than trusted event by event; one rescan covers everything below it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from wmpd.scan import Fingerprint, fingerprint
from wmpd.watcher import Change

T = TypeVar("T")
StatFunction = Callable[[Path], Fingerprint | None]


@dataclass
class _PendingFile:
    last_event: float
    seen: Fingerprint | None
    stable_since: float


@dataclass
class ReadyWork:
    """What may be applied now, in this order: moves, deletions, rescans, upserts."""

    moves: list[Change] = field(default_factory=list)
    deletes: list[Path] = field(default_factory=list)
    rescans: list[Path] = field(default_factory=list)
    upserts: list[tuple[Path, Fingerprint]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.moves or self.deletes or self.rescans or self.upserts)


def is_under(path: Path, directory: Path) -> bool:
    """Strictly below `directory` (not the directory itself)."""
    return path != directory and path.is_relative_to(directory)


def rebase(path: Path, old: Path, new: Path) -> Path:
    return new / path.relative_to(old)


def _rebase_keys(table: dict[Path, T], old: Path, new: Path) -> None:
    for path in [p for p in table if is_under(p, old)]:
        table[rebase(path, old, new)] = table.pop(path)


class ChangeBuffer:
    """Holds changes until they settle; not thread-safe (owned by the worker thread)."""

    def __init__(self, settle_seconds: float, stat: StatFunction = fingerprint) -> None:
        self.settle_seconds = settle_seconds
        self._stat = stat
        self._upserts: dict[Path, _PendingFile] = {}
        self._deletes: dict[Path, float] = {}
        self._rescans: dict[Path, float] = {}
        self._moves: list[Change] = []
        self._next_due = 0.0

    def __len__(self) -> int:
        return len(self._upserts) + len(self._deletes) + len(self._rescans) + len(self._moves)

    def add(self, change: Change, now: float) -> None:
        kind = change.kind
        if kind == "upsert":
            self._add_upsert(change.path, now, self._stat(change.path))
        elif kind == "delete":
            self._upserts.pop(change.path, None)
            self._deletes[change.path] = now
        elif kind == "move" and change.dest is not None:
            self._add_move(change, now)
        elif kind == "move_dir" and change.dest is not None:
            self._add_dir_move(change, now)
        elif kind in ("scan_dir", "delete_dir"):
            self._add_rescan(change.path, now)
        self._next_due = min(self._next_due, now + self.settle_seconds)

    def add_found(self, path: Path, found: Fingerprint, now: float) -> None:
        """A file a rescan came across: it settles like one that sent an event."""
        self._add_upsert(path, now, found)
        self._next_due = min(self._next_due, now + self.settle_seconds)

    def _add_upsert(self, path: Path, now: float, current: Fingerprint | None) -> None:
        self._deletes.pop(path, None)
        pending = self._upserts.get(path)
        if pending is None:
            self._upserts[path] = _PendingFile(now, current, now)
            return
        pending.last_event = now
        if current != pending.seen:
            pending.seen = current
            pending.stable_since = now

    def _covered_by_rescan(self, path: Path) -> bool:
        return any(path.is_relative_to(directory) for directory in self._rescans)

    def _add_move(self, change: Change, now: float) -> None:
        assert change.dest is not None
        if self._covered_by_rescan(change.path):
            # The catalog's row for the source may still be a file deleted before the
            # (not yet run) rescan: moving that row would carry stale content. Read the
            # destination instead; the rescan drops the source's row.
            self._upserts.pop(change.path, None)
            self._add_upsert(change.dest, now, self._stat(change.dest))
            return
        self._deletes.pop(change.dest, None)
        # Whatever was pending for the overwritten destination is moot: it now holds the
        # source's content, which the move itself (or the source's pending upsert) covers.
        self._upserts.pop(change.dest, None)
        pending = self._upserts.pop(change.path, None)
        self._moves.append(change)
        if pending is not None:
            # The content was never indexed at the old name; it still has to be, at the new.
            self._upserts[change.dest] = pending
            pending.last_event = now

    def _add_dir_move(self, change: Change, now: float) -> None:
        assert change.dest is not None
        old, new = change.path, change.dest
        _rebase_keys(self._upserts, old, new)
        if self._covered_by_rescan(old):
            # As for a file: the rows under `old` may be stale, so they stay where they are
            # for the pending rescan to drop, and the new place is read afresh.
            self._add_rescan(new, now)
            return
        self._moves.append(change)
        _rebase_keys(self._deletes, old, new)
        _rebase_keys(self._rescans, old, new)

    def _add_rescan(self, directory: Path, now: float) -> None:
        if any(directory.is_relative_to(pending) for pending in self._rescans):
            for pending in self._rescans:
                if directory.is_relative_to(pending):
                    self._rescans[pending] = now  # the tree is still changing: wait longer
            return
        for path in [p for p in self._rescans if is_under(p, directory)]:
            del self._rescans[path]
        # A rescan compares the whole directory with the catalog, so deletions pending
        # inside it are covered (pending upserts keep their settle state and stay).
        for path in [p for p in self._deletes if is_under(p, directory)]:
            del self._deletes[path]
        self._rescans[directory] = now

    def next_due(self, now: float) -> float:
        """Seconds until take_ready may release something (0 when it may now)."""
        if self._moves:
            return 0.0
        if not (self._upserts or self._deletes or self._rescans):
            return self.settle_seconds
        return max(0.0, self._next_due - now)

    def take_ready(self, now: float, max_upserts: int | None = None) -> ReadyWork:
        """Release what has settled; upserts are re-stat'ed to prove they are stable."""
        ready = ReadyWork(moves=self._moves)
        self._moves = []
        next_due = now + self.settle_seconds
        ready.deletes, due = self._take_settled(self._deletes, now)
        next_due = min(next_due, due)
        ready.rescans, due = self._take_settled(self._rescans, now)
        next_due = min(next_due, due)
        for path, pending in list(self._upserts.items()):
            if max_upserts is not None and len(ready.upserts) >= max_upserts:
                next_due = now  # more is ready than was taken
                break
            due = self._settled_at(pending)
            if due > now:
                next_due = min(next_due, due)
                continue
            current = self._stat(path)
            if current is None:
                del self._upserts[path]  # gone before it settled: its delete/move event follows
            elif current != pending.seen:
                pending.seen = current
                pending.stable_since = now
                next_due = min(next_due, now + self.settle_seconds)
            else:
                del self._upserts[path]
                ready.upserts.append((path, current))
        self._next_due = next_due
        return ready

    def _settled_at(self, pending: _PendingFile) -> float:
        return max(pending.last_event, pending.stable_since) + self.settle_seconds

    def _take_settled(self, table: dict[Path, float], now: float) -> tuple[list[Path], float]:
        settled = [p for p, at in table.items() if now - at >= self.settle_seconds]
        for path in settled:
            del table[path]
        due = min(table.values(), default=now) + self.settle_seconds
        return settled, due

    def discard_under(self, root: Path) -> None:
        """Forget everything pending under a root that went offline or was removed."""
        for table in (self._upserts, self._deletes, self._rescans):
            for path in [p for p in table if p.is_relative_to(root)]:
                del table[path]
        self._moves = [m for m in self._moves if not m.path.is_relative_to(root)]

"""`wmpd repair`: check the catalog and, when it is corrupt, move it aside safely.

Photos are never touched: wmpd only ever reads them. A corrupt catalog is renamed (not
deleted) so nothing is lost, and the next `wmpd index` or daemon start re-indexes.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from wmpd.datadir import DataDir, acquire_writer_lock
from wmpd.vectors import INDEX_FILE_NAME, META_FILE_NAME


def repair_data_dir(path: Path) -> list[str]:
    """Returns what was found and done, as lines for a human."""
    data_dir = DataDir(path)
    if not data_dir.exists():
        return [f"no catalog in {path}: nothing to repair"]
    lock = acquire_writer_lock(data_dir, "wmpd repair")
    try:
        problem = _catalog_problem(data_dir.catalog_path)
        lines = []
        for name in (INDEX_FILE_NAME, META_FILE_NAME):
            (path / name).unlink(missing_ok=True)
        lines.append("removed the vector index; it is rebuilt from the catalog at the next start")
        if problem is None:
            lines.insert(0, f"catalog {data_dir.catalog_path}: ok")
            return lines
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(data_dir.catalog_path) + suffix)
            if source.exists():
                source.rename(Path(f"{source}.corrupt-{stamp}"))
        lines.insert(0, f"catalog {data_dir.catalog_path} is damaged ({problem})")
        lines.append(
            f"moved it aside as {data_dir.catalog_path}.corrupt-{stamp}; run `wmpd index` or "
            f"restart the daemon to re-index (your photos were not touched)"
        )
        return lines
    finally:
        lock.release()


def _catalog_problem(catalog_path: Path) -> str | None:
    try:
        db = sqlite3.connect(catalog_path)
        try:
            result = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if result == "ok" else result

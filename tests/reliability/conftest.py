"""Fixtures for the reliability and security suites: real daemons, guarded photos, a tally.

At the end of a run the tally (faults injected, requests sent, errors, latencies) is
printed and written to test-artifacts/reliability.json.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images import GOOD_KINDS, write_good
from tests.reliability.harness import TALLY, DaemonFactory

REPO = Path(__file__).resolve().parents[2]
PILLOW_SAMPLES = REPO / "photos" / "pillow"
ARTIFACT = REPO / "test-artifacts" / "reliability.json"


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonFactory]:
    factory = DaemonFactory(tmp_path)
    yield factory
    factory.cleanup()


def make_sentinel(folder: Path, count: int = 12) -> Path:
    """Photos that no test touches after writing them: what the photo guard watches."""
    kinds = list(GOOD_KINDS)
    for number in range(count):
        kind = kinds[number % len(kinds)]
        write_good(folder / f"sentinel-{number:02d}{GOOD_KINDS[kind]}", kind, seed=500 + number)
    if PILLOW_SAMPLES.is_dir():  # the repository's sample photos, when checked out
        for sample in sorted(PILLOW_SAMPLES.glob("*.jpg"))[:4]:
            shutil.copy2(sample, folder / f"pillow-{sample.name}")
    return folder


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    return make_sentinel(tmp_path / "photos" / "sentinel")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY.daemon_starts and not TALLY.requests:
        return
    figures = TALLY.to_json()
    terminalreporter.section("wmpd reliability and security figures")
    for key, value in figures.items():
        terminalreporter.write_line(f"{key}: {value}")
    try:
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text(json.dumps(figures, indent=2) + "\n")
    except OSError as exc:
        terminalreporter.write_line(f"(could not write {ARTIFACT}: {exc})")

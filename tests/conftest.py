"""Shared pytest settings and fixtures; the repository root is importable (tests.harness).

Tests live in layers, one folder each, and each folder's tests carry its marker:
tests/pure, tests/protocol, tests/process, tests/integration (a real private Postfix),
tests/packaging (the deb and rpm).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List

import pytest
from twisted.logger import globalLogPublisher

LAYERS = ("pure", "protocol", "process", "integration", "packaging")


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        relative = Path(str(item.fspath)).relative_to(here)
        layer = relative.parts[0] if len(relative.parts) > 1 else ""
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture
def events() -> Iterator[List[dict]]:
    """Every twisted.logger event published during the test."""
    captured: List[dict] = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)

"""Test set-up: fixtures and time limits (helpers to import live in helpers.py).  Tests never read
../shared: fixtures they need live in tests/fixtures/."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


#: Tests marked slow train with real MindSpore for minutes; they get this limit unless they set their own
#: (@pytest.mark.timeout); every other test gets the ``timeout`` of pyproject.toml.
SLOW_TIMEOUT_S = 2400


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))

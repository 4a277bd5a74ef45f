"""Shared test configuration.

In CI (`MCPFW_REQUIRE_ALL_TESTS=1`, set by .ci/run) a test that would skip because PostgreSQL
or Node is missing fails instead: nothing that should run there may silently skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_ALL = os.environ.get("MCPFW_REQUIRE_ALL_TESTS") == "1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _need(what: str, available: bool) -> None:
    if available:
        return
    if REQUIRE_ALL:
        pytest.fail(f"{what} is required in CI (MCPFW_REQUIRE_ALL_TESTS=1) but is not available")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL URL for backend tests (skips locally without it, fails in CI)."""
    url = os.environ.get("MCPFW_TEST_POSTGRES_URL", "")
    _need("PostgreSQL (MCPFW_TEST_POSTGRES_URL)", bool(url))
    return url


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The pinned npm MCP servers installed by `make node` (skips without Node, fails in CI)."""
    path = ROOT / "node_modules" / "@modelcontextprotocol"
    _need(
        "Node.js with the pinned npm servers (run `make node`)",
        shutil.which("node") is not None and path.is_dir(),
    )
    return path

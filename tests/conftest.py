"""Shared fixtures: the local stack's settings from .env (written by `make up`)."""

from __future__ import annotations

import pytest

from stack import localstack


@pytest.fixture(scope="session")
def settings() -> dict[str, str]:
    """The stack's settings, expanded as `set -a; . ./.env` would."""
    if not localstack.ENV_FILE.exists():
        pytest.fail(".env is missing: run the suite through `make test`, which starts the stack first")
    return localstack.load_env()

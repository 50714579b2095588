"""Fixtures for the platform tests; the stacks themselves live in stacks.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from stacks import HTTPS_PORT, STACK, USERS_CREATED, Stack, launched_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The default stack: shared-password login on https://localhost."""
    with launched_stack(tmp_path_factory, STACK, HTTPS_PORT) as running:
        yield running


@pytest.fixture
def username() -> str:
    """A fresh student name per test; its container and volume are removed at the end."""
    name = f"student-{uuid.uuid4().hex[:8]}"
    USERS_CREATED.append(name)
    return name

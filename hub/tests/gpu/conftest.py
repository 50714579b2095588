"""Fixtures for the GPU tests: a declared inventory, a store, and Docker containers that are
always removed (labelled ``labhub.test=gpu``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import docker
import pytest
from labhub.gpu.inventory import Device, Inventory
from labhub.gpu.store import Store

from testsupport.images import BASE_IMAGE, ensure_base_image

TEST_LABEL = {"labhub.test": "gpu"}
IMAGE = BASE_IMAGE
NOW = datetime(2025, 11, 24, 9, 0, tzinfo=UTC)


def _remove_test_containers(client: docker.APIClient) -> None:
    for c in client.containers(all=True, filters={"label": "labhub.test=gpu"}):
        client.remove_container(c["Id"], force=True)


@pytest.fixture
def inventory() -> Inventory:
    """Two exclusive GPUs and one GPU shared by three."""
    return (
        Device(id="0", uuid="GPU-aaaa", model="Test A100", memory_mib=40960),
        Device(id="1", uuid="GPU-bbbb", model="Test A100", memory_mib=40960),
        Device(
            id="2", model="Test T4", memory_mib=15360, policy="shared", max_holders=3,
            memory_cap_mib=5000,
        ),
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: object) -> Store:
    return Store(f"{tmp_path}/gpu.sqlite")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.APIClient]:
    """The real engine; every container labelled labhub.test=gpu is removed at the end."""
    client = docker.APIClient(version="auto")
    ensure_base_image()
    _remove_test_containers(client)
    try:
        yield client
    finally:
        _remove_test_containers(client)
        client.close()

"""Docker adapter on the real engine: created (never started: no GPU runtime here)
containers carry exactly the assigned devices, and a restart reads them back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
from labhub.gpu import devicerequests
from labhub.gpu.inventory import Inventory
from labhub.gpu.scheduler import GpuRequest, Holder, State, allocate, rebuild, with_allocation
from labhub.gpu.store import Store

from .conftest import IMAGE, NOW, TEST_LABEL

pytestmark = pytest.mark.integration

Create = Callable[..., dict[str, Any]]


@pytest.fixture
def create(docker_client: docker.APIClient) -> Iterator[Create]:
    """Create a labelled container from an allocation; removed after the test."""
    created: list[str] = []

    def make(allocation: Any) -> dict[str, Any]:
        host_config = docker_client.create_host_config(**devicerequests.host_config(allocation))
        container = docker_client.create_container(
            IMAGE,
            command=["true"],
            environment=devicerequests.environment(allocation),
            labels={**TEST_LABEL, **devicerequests.labels(allocation)},
            host_config=host_config,
        )
        created.append(container["Id"])
        inspect: dict[str, Any] = docker_client.inspect_container(container["Id"])
        return inspect

    yield make
    for container_id in created:
        docker_client.remove_container(container_id, force=True)


def spawn_all(inventory: Inventory) -> State:
    state = rebuild(inventory, [])
    wants = {"ada": GpuRequest(whole=2), "bob": GpuRequest(shared=True), "cy": GpuRequest()}
    for user, request in wants.items():
        groups = frozenset({"nlp"})
        state = with_allocation(state, allocate(state, Holder(user, groups=groups), request, NOW))
    return state


def test_device_requests_match_assignment(inventory: Inventory, create: Create) -> None:
    state = spawn_all(inventory)
    ada = create(state.allocations["ada"])
    assert ada["HostConfig"]["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["0", "1"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert "NVIDIA_VISIBLE_DEVICES=0,1" in ada["Config"]["Env"]
    bob = create(state.allocations["bob"])
    assert bob["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["2"]
    assert "GPU_MEMORY_LIMIT_MB=5000" in bob["Config"]["Env"]
    cy = create(state.allocations["cy"])
    assert not cy["HostConfig"]["DeviceRequests"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in cy["Config"]["Env"]


def test_restart_rebuilds_every_assignment(
    inventory: Inventory, create: Create, docker_client: docker.APIClient, store: Store
) -> None:
    state = spawn_all(inventory)
    for allocation in state.allocations.values():
        create(allocation)
    observed = [
        a
        for a in devicerequests.observed_allocations(docker_client, NOW)
        if a.holder in state.allocations
    ]
    gpu_holders = {k: a for k, a in state.allocations.items() if a.device_ids}
    assert {a.holder: a for a in observed} == gpu_holders
    # the hub's record was lost (fresh store): adoption restores it, nothing double-booked
    assert store.adopt(inventory, observed, NOW) == ([], ["ada", "bob"])
    assert store.state(inventory).allocations == gpu_holders


def test_unlabelled_gpu_container_still_holds_its_device(
    docker_client: docker.APIClient,
) -> None:
    container = docker_client.create_container(
        IMAGE, command=["true"], labels=TEST_LABEL,
        host_config=docker_client.create_host_config(
            device_requests=[docker.types.DeviceRequest(driver="nvidia", device_ids=["1"],
                                                        capabilities=[["gpu"]])]
        ),
    )  # fmt: skip
    try:
        inspect = docker_client.inspect_container(container["Id"])
        allocation = devicerequests.allocation_from_inspect(inspect, NOW)
        assert allocation is not None
        assert allocation.device_ids == ("1",)
        assert allocation.holder == "container:" + inspect["Name"].lstrip("/")
    finally:
        docker_client.remove_container(container["Id"], force=True)

"""The shared test toolbox (testsupport) does what every test relies on it for."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator

import docker
import pytest
from labhub.contract import OWNER_LABEL, container_name_prefix
from stacks import STACK

from testsupport.containers import user_container, user_containers
from testsupport.images import ensure_base_image
from testsupport.waiting import wait_until


# --- wait_until ----------------------------------------------------------------------
@pytest.mark.unit
def test_wait_until_returns_the_first_value_that_is_done() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter), 5, "three", done=lambda n: n == 3, interval=0) == 3


@pytest.mark.unit
def test_a_timeout_names_what_was_awaited_and_the_last_value() -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError) as error:
        wait_until(
            lambda: {"ready": False},
            0.3,
            "alice's server",
            done=lambda model: model["ready"],
            interval=0.05,
        )
    assert time.monotonic() - start < 2
    assert "alice's server" in str(error.value)
    assert "last value: {'ready': False}" in str(error.value)


@pytest.mark.unit
def test_ignored_errors_mean_not_yet_and_the_last_one_is_shown() -> None:
    calls = itertools.count()

    def refused_twice() -> str:
        if next(calls) < 2:
            raise ConnectionRefusedError("port 8081")
        return "up"

    assert wait_until(refused_twice, 5, "the hub", interval=0, ignoring=(OSError,)) == "up"

    def refused() -> str:
        raise ConnectionRefusedError("port 8081")

    with pytest.raises(TimeoutError, match=r"the hub; last error: ConnectionRefusedError\('port"):
        wait_until(refused, 0.2, "the hub", interval=0.05, ignoring=(OSError,))


@pytest.mark.unit
def test_any_other_error_ends_the_wait_at_once() -> None:
    def spawn_failed() -> bool:
        raise AssertionError("alice's spawn failed")

    start = time.monotonic()
    with pytest.raises(AssertionError, match="spawn failed"):
        wait_until(spawn_failed, 30, "alice's server", ignoring=(OSError,))
    assert time.monotonic() - start < 1


# --- user containers -----------------------------------------------------------------
@pytest.fixture
def lookalikes() -> Iterator[tuple[str, dict[str, str]]]:
    """Created (never started) containers: alice's in a fresh stack's network, and the
    ones a loose lookup would take for it (another stack whose name ends like this one,
    an unlabelled container under the same prefix). Always removed."""
    engine = docker.from_env()
    network = f"{STACK}tb{uuid.uuid4().hex[:6]}"
    prefix = container_name_prefix(network)
    made = {
        "alice": (prefix + "alice", {OWNER_LABEL: "alice"}),
        "other stack": ("x" + prefix + "alice", {OWNER_LABEL: "alice"}),
        "unlabelled": (prefix + "bob", {}),
    }
    ids = {}
    try:
        for what, (name, labels) in made.items():
            container = engine.containers.create(
                ensure_base_image(), ["true"], name=name, labels=labels, network_mode="none"
            )
            ids[what] = container.id
        yield network, ids
    finally:
        for container_id in ids.values():
            engine.api.remove_container(container_id, force=True)


@pytest.mark.integration
def test_user_container_finds_only_the_stacks_labelled_container(
    lookalikes: tuple[str, dict[str, str]],
) -> None:
    network, ids = lookalikes
    assert user_container(network, "alice").id == ids["alice"]
    assert [c.id for c in user_containers(network)] == [ids["alice"]]
    assert user_containers(network, "bob") == []

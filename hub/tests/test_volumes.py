"""Per-user volume names: Docker-safe, and distinct for distinct usernames."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from labhub.contract import volume_name_for, volume_prefix

pytestmark = pytest.mark.unit
DOCKER_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


@pytest.mark.parametrize(
    "username", ["alice", "jan.novak", "élodie", "李雷", "a-b", "a-2db", "x" * 500, "user@uni.edu"]
)
def test_volume_names_are_docker_safe(username: str) -> None:
    name = volume_name_for(username, "labhub")
    assert DOCKER_VOLUME_NAME.match(name), name
    assert name.startswith("labhub-user-")
    assert len(name) <= 120


def test_names_that_escape_alike_stay_apart() -> None:
    # "a-b" escapes its dash; a user literally called "a-2db" must not share its volume.
    assert volume_name_for("a-b", "labhub") != volume_name_for("a-2db", "labhub")
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert volume_name_for(long_a, "labhub") != volume_name_for(long_b, "labhub")


@given(st.text(min_size=1, max_size=200), st.text(min_size=1, max_size=200))
def test_distinct_usernames_get_distinct_volumes(first: str, second: str) -> None:
    if first != second:
        assert volume_name_for(first, "labhub") != volume_name_for(second, "labhub")


def test_the_default_stack_keeps_its_volume_names_and_other_stacks_get_their_own() -> None:
    # Installs from before per-stack names used labhub-user-<name>: unchanged for them.
    assert volume_name_for("alice", "labhub") == "labhub-user-alice"
    assert volume_name_for("alice", "course2") == "course2-user-alice"
    assert volume_prefix("course2") == "course2-user-"

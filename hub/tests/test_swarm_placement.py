"""Swarm placement (labhub.swarmplacement): a home is sticky, new homes spread, a home on
an unusable node is an error naming it, a home already on a node is kept there. Properties
over any cluster and any history."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from labhub.swarmplacement import (
    NoNodeForServer,
    SwarmNode,
    existing_home,
    node_for,
    nodes_from_api,
    pin_constraint,
    pinned_node,
    servers_per_node,
)

pytestmark = pytest.mark.unit

NODE_IDS = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=25, max_size=25)
nodes_st = st.lists(
    st.builds(
        SwarmNode, id=NODE_IDS, ready=st.booleans(), active=st.booleans(), retiring=st.booleans()
    ),
    max_size=6,
    unique_by=lambda node: node.id,
)
loads_st = st.dictionaries(NODE_IDS, st.integers(0, 50), max_size=6)


@given(nodes_st, loads_st)
def test_a_first_spawn_goes_to_a_usable_node_not_retiring_with_the_fewest_servers(
    nodes: list[SwarmNode], load: dict[str, int]
) -> None:
    usable = [node for node in nodes if node.usable and not node.retiring]
    if not usable:
        with pytest.raises(NoNodeForServer, match="ready, active and not retiring"):
            node_for(None, nodes, load)
        return
    chosen = node_for(None, nodes, load)
    assert chosen in {node.id for node in usable}
    assert load.get(chosen, 0) == min(load.get(node.id, 0) for node in usable)


@given(nodes_st, loads_st, st.data())
def test_a_recorded_home_wins_over_load_or_is_an_error_naming_its_node(
    nodes: list[SwarmNode], load: dict[str, int], data: st.DataObject
) -> None:
    home = data.draw(st.sampled_from([node.id for node in nodes]) if nodes else NODE_IDS)
    found = next((node for node in nodes if node.id == home), None)
    if found is not None and found.usable:
        # A retiring node too: its homes run there until an admin moves them.
        assert node_for(home, nodes, load) == home
        return
    # Down, drained or gone: never a fresh (empty) home on another node.
    reason = "left the swarm" if found is None else "down" if not found.ready else "drained"
    with pytest.raises(NoNodeForServer, match=f"node {home}, which .*{reason}"):
        node_for(home, nodes, load)


def test_nodes_and_pins_are_read_from_the_api_answers() -> None:
    listing = [
        {"ID": "b2", "Status": {"State": "ready"}, "Spec": {"Availability": "drain"}},
        {"ID": "a1", "Status": {"State": "ready"}, "Spec": {"Availability": "active"}},
        {"ID": "c3", "Status": {"State": "down"}, "Spec": {"Availability": "active"}},
        {
            "ID": "d4",
            "Status": {"State": "ready"},
            "Spec": {"Availability": "active", "Labels": {"labhub.retiring": "true"}},
        },
        {
            "ID": "e5",
            "Status": {"State": "ready"},
            "Spec": {"Availability": "active", "Labels": {"labhub.retiring": "false"}},
        },
    ]
    assert nodes_from_api(listing) == [
        SwarmNode("a1", ready=True, active=True),
        SwarmNode("b2", ready=True, active=False),
        SwarmNode("c3", ready=False, active=True),
        SwarmNode("d4", ready=True, active=True, retiring=True),
        SwarmNode("e5", ready=True, active=True),
    ]
    services = [
        {"Spec": {"TaskTemplate": {"Placement": {"Constraints": [pin_constraint("a1")]}}}},
        {"Spec": {"TaskTemplate": {"Placement": {"Constraints": ["node.id==a1"]}}}},
        {"Spec": {"TaskTemplate": {"Placement": {"Constraints": ["node.role==manager"]}}}},
        {"Spec": {"TaskTemplate": {}}},
    ]
    assert servers_per_node(services) == Counter({"a1": 2})
    assert pinned_node(["node.role==worker", "node.id==c3"]) == "c3"
    with pytest.raises(ValueError, match="not a Swarm node ID"):
        pin_constraint("a1 || node.role==manager")


class LabOverTime(RuleBasedStateMachine):
    """Users spawn and stop on a three-node swarm whose nodes go down and come back:
    a user's server always runs on their first node, and first spawns stay balanced."""

    NODES = ("n1", "n2", "n3")

    def __init__(self) -> None:
        super().__init__()
        self.ready = dict.fromkeys(self.NODES, True)
        self.homes: dict[str, str] = {}
        self.running: dict[str, str] = {}

    def nodes(self) -> list[SwarmNode]:
        return [SwarmNode(node, self.ready[node], True) for node in self.NODES]

    @rule(user=st.sampled_from(["ann", "bob", "cy", "dee", "eve", "fay", "gus"]))
    def spawn(self, user: str) -> None:
        if user in self.running:
            return
        load = Counter(self.running.values())
        home = self.homes.get(user)
        try:
            node = node_for(home, self.nodes(), load)
        except NoNodeForServer:
            # Only when the home is down, or for a first spawn when every node is.
            assert not self.ready[home] if home else not any(self.ready.values())
            return
        if home is None:
            # Balanced among the nodes that are up: nobody gets a busier node than needed.
            assert load[node] == min(load[n] for n in self.NODES if self.ready[n])
        self.homes.setdefault(user, node)
        self.running[user] = node

    @rule(user=st.sampled_from(["ann", "bob", "cy", "dee", "eve", "fay", "gus"]))
    def stop(self, user: str) -> None:
        self.running.pop(user, None)

    @rule(node=st.sampled_from(NODES), ready=st.booleans())
    def node_changes(self, node: str, ready: bool) -> None:
        self.ready[node] = ready

    @invariant()
    def every_server_runs_on_its_users_home(self) -> None:
        assert all(self.homes[user] == node for user, node in self.running.items())


TestLabOverTime = LabOverTime.TestCase


@given(nodes_st, st.data())
def test_a_home_already_on_a_node_is_kept_and_an_unclear_answer_is_an_error(
    nodes: list[SwarmNode], data: st.DataObject
) -> None:
    """Whatever the nodes' states: one holder is the home; two are an error naming both;
    none is no home only when every ready node answered, else an error naming the silent."""
    ids = [node.id for node in nodes]
    answered = set(data.draw(st.lists(st.sampled_from(ids)) if ids else st.just([])))
    holding = set(data.draw(st.lists(st.sampled_from(sorted(answered)))) if answered else set())
    silent = sorted(node.id for node in nodes if node.ready and node.id not in answered)
    if len(holding) > 1:
        with pytest.raises(NoNodeForServer, match="the home volume is on nodes") as refused:
            existing_home(nodes, answered, holding)
        assert all(node in str(refused.value) for node in holding)
    elif holding:
        assert existing_home(nodes, answered, holding) == next(iter(holding))
    elif silent:
        with pytest.raises(NoNodeForServer, match="its Docker proxy does not answer") as refused:
            existing_home(nodes, answered, holding)
        assert ", ".join(silent) in str(refused.value)
    else:
        assert existing_home(nodes, answered, holding) is None

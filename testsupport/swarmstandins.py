"""Stand-ins for driving LabSwarmSpawner without a hub or an engine: the part of a
JupyterHub user a spawner reads, and a Swarm manager that records what it is sent."""

from __future__ import annotations

import json
import time
from typing import Any

import requests

from testsupport.recording import RecordingAPIClient

NODES = [
    {"ID": node_id, "Status": {"State": "ready"}, "Spec": {"Availability": "active"}}
    for node_id in ("n1", "n2", "n3")
]


class HubUser:
    """The part of a JupyterHub user a spawner reads, for spawners driven without a hub."""

    admin = False
    groups: tuple[object, ...] = ()

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = f"/user/{name}/"


class SlowManager(RecordingAPIClient):
    """A three-node Swarm manager where every call takes 20 ms (so concurrent spawns
    interleave) and a created service is listed from then on, its task running (or, with
    `task_error`, ended by its node in `task_state`); removed by its ID once, it is gone
    after."""

    def __init__(self, task_error: str = "", task_state: str = "rejected") -> None:
        super().__init__(strip="/v1.41")
        self.created: dict[str, dict[str, Any]] = {}
        self.task_error, self.task_state = task_error, task_state
        self.removed = False

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        time.sleep(0.02)
        if url.endswith("/services/create"):
            body = json.loads(kwargs["data"])
            self.created[body["Name"]] = body
        response = super().request(method, url, **kwargs)
        if method == "DELETE" and url.endswith("/services/svc"):
            self.removed = True
        return response

    def answer(self, path: str) -> tuple[int, Any]:
        if path == "/nodes":
            return 200, NODES
        if path == "/services":
            return 200, [{"Spec": body} for body in list(self.created.values())]
        if path == "/services/create":
            return 201, {"ID": "svc"}
        if path == "/tasks" and self.task_error:
            status = {"State": self.task_state, "Err": self.task_error}
            return 200, [{"NodeID": "n1", "Status": status}]
        if path == "/tasks":
            return 200, [{"Status": {"State": "running"}}]
        if path.startswith("/networks/"):  # each user's network, the hub already on it
            return 200, {"Containers": {"c1": {"Name": "labhub-hub"}}}
        if path.startswith("/images/"):
            return 200, {"Config": {"Cmd": ["start-notebook.py"]}}
        name = path.removeprefix("/services/")
        if name == "svc":  # the service by its ID: removed, once; then gone
            return (404, {"message": "service svc not found"}) if self.removed else (200, {})
        if name in self.created:
            return 200, {"ID": "svc", "Spec": {"Labels": self.created[name]["Labels"]}}
        return 404, {"message": "service not found"}

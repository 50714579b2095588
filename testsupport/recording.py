"""docker-py that talks to no engine: what the spawners send, recorded for the rules' tests.

The proxy's rules are tested against the requests LabSpawner and LabSwarmSpawner really
make; a subclass answers each path like the engine it stands for.
"""

from __future__ import annotations

import json
from typing import Any

import docker
import requests

_BASE = "http://127.0.0.1:9"


class RecordingAPIClient(docker.APIClient):  # type: ignore[misc]
    """docker-py with the HTTP session replaced: records (method, path, params, data) of
    each request in `sent`, paths without `strip` (e.g. "/v1.41"), and answers with
    `answer(path)`."""

    def __init__(self, strip: str = "") -> None:
        super().__init__(base_url="tcp://127.0.0.1:9", version="1.41")
        self.strip = _BASE + strip
        self.sent: list[tuple[str, str, dict[str, Any] | None, str | None]] = []

    def answer(self, path: str) -> tuple[int, Any]:
        """The engine's status and JSON body for `path`."""
        raise NotImplementedError

    def sent_to(self, path_end: str) -> bool:
        """Whether a request to a path ending in `path_end` was sent."""
        return any(path.endswith(path_end) for _, path, _, _ in self.sent)

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        path = url.removeprefix(self.strip)
        self.sent.append((method, path, kwargs.get("params"), kwargs.get("data")))
        status, answer = self.answer(path)
        response = requests.Response()
        response.status_code, response.url = status, url
        response._content = b"" if status == 204 else json.dumps(answer).encode()
        response.headers["Content-Type"] = "application/json"
        return response
